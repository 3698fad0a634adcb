"""One training, as data: the single request type both trainers take.

The build makes it (charfw.layout), the embedded trainer (charfw.train) and the sd-scripts
backend (charfw.sdscripts) consume it, its fingerprints (charfw.fingerprint) hash it. Paths are
absolute; `model`/`vae` are "builtin:<name>" or absolute file paths (see rules.modelref).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from charfw.config.models import ClusterSettings, SampleSettings, TrainSettings
from charfw.families import Family
from charfw.recipe import Recipe, recipe_of


@dataclass(frozen=True)
class ProgressSamples:
    """What the embedded trainer renders every `settings.sample_every_n_steps` steps, and where."""

    prompt: str
    settings: SampleSettings
    folder: Path                        # step-000100.png ...


def progress_steps(every: int | None, steps: int) -> list[int]:
    """The steps after which a progress sample is rendered."""
    return list(range(every, steps + 1, every)) if every else []


@dataclass(frozen=True)
class TrainRequest:
    name: str                           # target name: file names, logs, progress bar
    settings: TrainSettings
    steps: int
    dataset_toml: Path
    model: str
    output: Path                        # the LoRA file, written atomically
    state_dir: Path                     # resumable state / sd-scripts' working folder
    family: Family                      # the base model's
    vae: str | None = None
    log_dir: Path | None = None         # TensorBoard logs
    trigger_words: tuple[str, ...] = ()
    root: Path = field(default_factory=Path.cwd)  # the workspace: relative paths and names in the run key
    init_weights: Path | None = None    # start from this LoRA (an outfit from its face)
    inputs: tuple[Path | str, ...] = ()  # every file whose content the run reads (for the run key)
    device: str | None = None           # None: CUDA when available (embedded trainer)
    progress: bool = True
    progress_samples: "ProgressSamples | None" = None   # images during training (sample_every_n_steps)
    run_cache: str | None = None        # the shared run cache's URL (charfw.runcache): not part of the run
    cluster: ClusterSettings | None = None   # train on this Ray cluster (charfw.cluster): not part of the run
    on_state_saved: Callable[[int], None] | None = None   # after each resumable state (a node sends it home)

    @property
    def key_file(self) -> Path:
        """Where the run key of the finished LoRA is recorded."""
        return self.output.with_name(self.output.name + ".key")

    @cached_property
    def recipe(self) -> Recipe:
        """What this training trains with (charfw.recipe): both trainers and the metadata read it."""
        return recipe_of(self.settings, self.family, self.steps)

    def with_settings(self, **changes) -> "TrainRequest":
        """The same request with some settings replaced (e.g. AdamW where 8-bit is unavailable)."""
        return replace(self, settings=self.settings.model_copy(update=changes))
