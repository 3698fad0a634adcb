"""One target's training run as data: its inputs, its identity (run key), and how to run it.

doit's database is written only at the end of a run, so losing it must not retrain finished
LoRAs. The train task therefore decides up-to-dateness itself: a *run key* hashes every
setting the backend reads plus the content of every input file; it is stored beside the
LoRA, and a LoRA whose stored key matches is finished whatever doit remembers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from charfw.config.models import TrainSettings
from charfw.errors import CharfwError
from charfw.fsutil import write_text

# Settings only one backend reads: changing them must not retrain targets of the other.
SD_SCRIPTS_ONLY = {"sd_scripts", "python", "extra_args", "attention"}
EMBEDDED_ONLY = {"save_every_n_steps", "cache_latents"}
NOT_TRAINING = {"python"}  # which interpreter runs sd-scripts does not change the result


@dataclass
class TrainJob:
    name: str
    settings: TrainSettings
    steps: int
    dataset_toml: Path
    model: str  # "builtin:..." or an absolute path
    vae: str | None
    output: Path
    state_dir: Path
    log_dir: Path
    trigger_words: list[str]
    root: Path
    init_weights: Path | None = None
    inputs: list[Path] = field(default_factory=list)  # every file whose content the run reads

    @property
    def key_file(self) -> Path:
        return self.output.with_name(self.output.name + ".key")

    def config(self) -> dict:
        """Every value the chosen backend reads, JSON-ready."""
        skip = (EMBEDDED_ONLY if self.settings.trainer == "sd-scripts" else SD_SCRIPTS_ONLY) | NOT_TRAINING
        return {
            "settings": self.settings.model_dump(exclude=skip),
            "steps": self.steps,
            "model": _identity(self.model),
            "vae": _identity(self.vae) if self.vae else None,
            "name": self.name,
            "trigger_words": self.trigger_words,
        }


def run_key(job: TrainJob) -> str | None:
    """Hash of config + input contents; None while an input is missing (not built yet)."""
    h = hashlib.sha256(json.dumps(job.config(), sort_keys=True).encode())
    for path in sorted(job.inputs):
        try:
            digest = hashlib.md5(path.read_bytes()).hexdigest()
        except OSError:
            return None
        h.update(f"{path.relative_to(job.root) if path.is_relative_to(job.root) else path}:{digest}\n".encode())
    return h.hexdigest()


def is_trained(job: TrainJob) -> bool:
    key = run_key(job)
    try:
        return key is not None and job.output.is_file() and job.key_file.read_text().strip() == key
    except OSError:
        return False


def _identity(model: str) -> str:
    """A cheap content identity for multi-GB checkpoints: size + sd-scripts' legacy 64 KiB hash."""
    if model.startswith("builtin:"):
        return model
    from charfw.models import model_hash

    path = Path(model)
    try:
        return f"{path.name}:{path.stat().st_size}:{model_hash(path)}"
    except (OSError, CharfwError):  # missing now: the run itself will say so clearly
        return f"{path.name}:missing"


def show_log() -> None:
    """Trainer notes (resuming from step N, AdamW instead of AdamW 8-bit) go to the console."""
    logger = logging.getLogger("charfw")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("charfw: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def run(job: TrainJob) -> None:
    """Train with the configured backend, then record the run key (after the LoRA is in place)."""
    show_log()
    key = run_key(job)
    common = dict(dataset_toml=job.dataset_toml, settings=job.settings, steps=job.steps, model=job.model,
                  vae=job.vae, output=job.output, log_dir=job.log_dir, name=job.name,
                  init_weights=job.init_weights)
    if job.settings.trainer == "sd-scripts":
        from charfw.sdscripts.runner import run_sd_scripts

        run_sd_scripts(**common, work_dir=job.state_dir, root=job.root)
    else:
        from charfw.train import train_lora

        train_lora(**common, state_dir=job.state_dir, trigger_words=job.trigger_words)
    if key is not None:
        write_text(job.key_file, key + "\n")


def command_line(job: TrainJob) -> list[str]:
    """The exact command that trains this target outside doit (what `charfw plan` prints)."""
    if job.settings.trainer == "sd-scripts":
        from charfw.sdscripts.runner import sd_scripts_command

        return sd_scripts_command(dataset_toml=job.dataset_toml, settings=job.settings, steps=job.steps,
                                  model=job.model, vae=job.vae, work_dir=job.state_dir, log_dir=job.log_dir,
                                  name=job.name, init_weights=job.init_weights, root=job.root)[1]
    return ["charfw", "train", job.name, "-C", str(job.root)]
