"""What a run is: one module for the identity of a model file and the fingerprints of a run.

Two questions, one answer each, both from the classification of every training setting in
charfw.config.models (each field says once whether it changes the weights):

- **Finished?** The *run key* hashes the settings the chosen trainer reads that change the result
  (`run_key_fields`), the steps, the model and VAE files' identities, the name and trigger words,
  plus the content of every input file. It is recorded beside the LoRA (`.key`); a LoRA whose
  stored key matches is never retrained, whatever doit's database remembers (doit writes it only
  at the end of a run, so losing it must not retrain finished LoRAs).
- **Resumable?** The *state key* hashes what decides the trained weights step by step
  (`resume_fields`), the steps, the files' identities, the dataset as the trainer built it, the
  initial weights, the number of processes and the embedded trainer's version. A saved state is
  resumed only under the same state key. The trainer version is in the state key only: a charfw
  upgrade discards half-done states it cannot continue exactly, but never retrains a finished LoRA.

File contents are digested once per (path, size, mtime_ns), as doit's own MD5 checker
does, and the digests are kept in `build/.digests.json` (charfw.filecache): a no-op `doit`
reads no image bytes, and targets sharing a face set digest it once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from charfw.config.models import keyed, resume_fields, run_key_fields
from charfw.errors import CharfwError
from charfw.filecache import FileCache, file_cache
from charfw.fsutil import write_text
from charfw.models.hashing import model_hash, model_sha256
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


TRAINER_VERSION = 3   # the embedded trainer's: bump when a change alters what the same inputs train to


@dataclass(frozen=True)
class FileIdentity:
    """A model file as charfw tells files apart: name, size and sd-scripts' legacy hash (64 KiB at
    1 MiB, cheap on a multi-GB checkpoint); `sha256` of the whole file only where metadata records it."""

    path: Path
    size: int
    legacy_hash: str

    @property
    def text(self) -> str:
        """As the run key holds it."""
        return f"{self.path.name}:{self.size}:{self.legacy_hash}"

    @property
    def record(self) -> dict:
        """As the state key holds it."""
        return {"name": self.path.name, "size": self.size, "hash": self.legacy_hash}

    @cached_property
    def sha256(self) -> str:
        return model_sha256(self.path)


def file_identity(path: str | Path) -> FileIdentity:
    """The identity of an existing model file (OSError or CharfwError when it cannot be read)."""

    path = Path(path)
    return FileIdentity(path, path.stat().st_size, model_hash(path))


def file_record(path: Path | None) -> dict | None:
    return None if path is None else file_identity(path).record


def model_identity(model: str | None) -> str | None:
    """The run key's identity of a `model:`/`vae:` value: a built-in by name, a file by its identity."""
    if model is None or is_builtin(model):
        return model
    try:
        return file_identity(model).text
    except (OSError, CharfwError):  # missing now: the run itself will say so clearly
        return f"{Path(model).name}:missing"


def fingerprint(parts: dict) -> str:
    """The hash of a run's parts (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def resume_parts(job: TrainRequest, datasets, model: Path | None, vae: Path | None, world: int) -> dict:
    """What decides the trained weights step by step (the state key's parts): `datasets` as the
    trainer built them (charfw.train.dataset), the model and VAE files it read, `world` processes."""
    data = [{"resolution": d.resolution, "batch": d.batch_size,
             "subsets": [(s.num_repeats, s.flip_aug, s.color_aug, *(("alpha_mask",) if s.alpha_mask else ()),
                          *(("is_reg",) if s.is_reg else ())) for s in d.subsets],
             "images": [(i.sha256, i.caption, i.placement.bucket, i.placement.resized, i.subset,
                         *((i.repeats,) if d.subsets[i.subset].is_reg else ())) for i in d.images]}
            for d in datasets]
    init = None
    if job.init_weights is not None:
        init = hashlib.sha256(Path(job.init_weights).read_bytes()).hexdigest()
    settings = keyed(job.settings, resume_fields())
    return {"trainer": TRAINER_VERSION, "settings": settings, "steps": job.steps, "model": file_record(model),
            "vae": file_record(vae), "data": data, "init": init, "world": world}


CPU_PREFIX = "cpu:"  # a key file "cpu:<key>": trained on a CPU, where mixed precision is not used


def run_config(req: TrainRequest, cpu: bool = False) -> dict:
    """Every value the chosen trainer reads that changes its result, JSON-ready (the run key's parts).

    `cpu`: the embedded trainer ran on a CPU, always in fp32, so `mixed_precision` did not matter.
    """
    fields = set(run_key_fields(req.settings.trainer))
    if cpu and req.settings.trainer == "embedded":
        fields.discard("mixed_precision")
    return {
        "settings": keyed(req.settings, frozenset(fields)),
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
