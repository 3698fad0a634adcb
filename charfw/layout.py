"""Where the build writes everything: one place for every output path.

The CLI, `charfw plan`, the report and the doit tasks all ask this module, so a path is
spelled once. Paths given to doit are relative to the workspace (a copied or moved
workspace stays up to date) and built as strings: a 100-character workspace has ~20,000.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from charfw.cluster.settings import cluster_settings
from charfw.config.models import ClusterSettings
from charfw.dataset.plan import Prepared, image_header, plan_set
from charfw.filecache import file_cache
from charfw.project import Project, Target
from charfw.request import ProgressSamples, TrainRequest
from charfw.rules.modelref import resolve_model_ref
from charfw.runcache import cache_url
from charfw.sample.prompts import sample_prompts

HEADERS_FILE = ".images.json"   # [width, height, has_alpha] of every source, from its header


class Layout:
    """A loaded workspace, its prepared-image plans and the paths of everything the build writes."""

    def __init__(self, project: Project, plans: dict[str, list[Prepared]] | None = None):
        self.project = project
        self.root = project.root
        self._prefix = str(project.root) + os.sep
        self.build_dir = project.build_dir
        self.images_root = self.build_dir / "images"
        self.datasets_dir = self.build_dir / "datasets"
        self.log_dir = self.build_dir / "logs"
        self.plans = plans if plans is not None else self._plan_sets()

    @cached_property
    def headers(self) -> dict[Path, tuple[int, int, bool]]:
        """(width, height, has_alpha) of every source, read from its header once per file version: every
        doit run leaves them for the next `charfw check`, `charfw plan` and report."""
        cache = file_cache(self.build_dir, HEADERS_FILE)
        headers = {src.path: tuple(cache.get(src.path, lambda p: list(image_header(p))))
                   for s in self.project.all_sets.values() for src in s.sources}
        cache.save()
        return headers

    def transparent(self, set_id: str) -> bool:
        """Whether any source of the set has an alpha channel (from the headers)."""
        return any(self.headers[src.path][2] for src in self.project.all_sets[set_id].sources)

    @cached_property
    def masked_sets(self) -> frozenset[str]:
        """Sets whose prepared images keep their alpha: transparent ones a `masked_loss` target trains on."""
        return frozenset(sub.set.id for t in self.project.trained_targets() if t.train.masked_loss
                         for sub in (*t.subsets, *t.reg_subsets) if self.transparent(sub.set.id))

    def _plan_sets(self) -> dict[str, list[Prepared]]:
        """Every set's prepared images."""
        sizes = {path: header[:2] for path, header in self.headers.items()}
        return {sid: plan_set(s, self.project.family, sizes) for sid, s in self.project.all_sets.items()}

    @cached_property
    def _writable(self) -> tuple[str, ...]:
        """The folders the build may write in, as `rel` spells them, each ending in '/'."""
        return tuple(os.path.normpath(self.rel(d)).replace(os.sep, "/") + "/"
                     for d in (self.build_dir, self.project.dist_dir))

    def outside(self, rels) -> str | None:
        """The first of these workspace-relative paths that does not lie in build/ or dist/ (None: all do).
        Lexical, so a build/ that is a symlink to another disk still works; names the schema let through
        that would still climb out (a second line of defence) are caught here before anything is written."""
        writable = self._writable
        for rel in rels:
            norm = os.path.normpath(rel)
            if os.sep != "/":
                norm = norm.replace(os.sep, "/")
            if "\\" in rel or os.path.isabs(norm) or not norm.startswith(writable):
                return rel
        return None

    def rel(self, path: Path | str) -> str:
        """A path as doit's database stores it: relative to the workspace, with '/'."""
        text = str(path)
        rel = text[len(self._prefix):] if text.startswith(self._prefix) else os.path.relpath(text, self.root)
        return rel if os.sep == "/" else rel.replace(os.sep, "/")

    # -- images and captions ---------------------------------------------------------

    @cached_property
    def _images_rel(self) -> str:
        return self.rel(self.images_root)

    def set_dir(self, set_id: str) -> Path:
        return self.images_root / set_id

    def image_rel(self, set_id: str, item: Prepared) -> str:
        return f"{self._images_rel}/{set_id}/{item.folder}/{item.name}"

    def caption_rel(self, set_id: str, item: Prepared) -> str:
        return f"{self._images_rel}/{set_id}/{item.folder}/{item.source.stem}.txt"

    @cached_property
    def _set_files(self) -> dict[str, list[str]]:
        return {sid: [p for i in items for p in (self.image_rel(sid, i), self.caption_rel(sid, i))]
                for sid, items in self.plans.items()}

    def dataset_files(self, target: Target) -> list[str]:
        """Every prepared image and caption a target's dataset holds (relative paths)."""
        return [p for sub in (*target.subsets, *target.reg_subsets) for p in self._set_files[sub.set.id]]

    # -- per target ----------------------------------------------------------------

    def toml_path(self, target: str) -> Path:
        return self.datasets_dir / f"{target}.toml"

    def trained_path(self, target: Target) -> Path:
        """The target's trained LoRA: a declared file (trained elsewhere), else what `train` writes."""
        return target.lora or self.build_dir / "train" / f"{target.name}.safetensors"

    def state_dir(self, target: Target) -> Path:
        return self.build_dir / "train" / f"{target.name}.state"

    def merged_path(self, target: Target) -> Path:
        return self.build_dir / "merged" / f"{target.name}.safetensors"

    def dist_path(self, target: Target) -> Path:
        return self.project.dist_dir / f"{target.name}.safetensors"

    def train_request(self, target: Target) -> TrainRequest:
        cfg, root = self.project.config, self.root
        init = self.trained_path(self.project.targets[target.init]) if target.init else None
        toml = self.toml_path(target.name)
        prefix = self._prefix  # strings: a 100-character workspace has ~20,000 of them
        files = [prefix + p for p in self.dataset_files(target)]
        return TrainRequest(
            name=target.name, settings=target.train, steps=target.steps, dataset_toml=toml,
            model=resolve_model_ref(cfg.model, root), vae=resolve_model_ref(cfg.vae, root) if cfg.vae else None,
            output=self.trained_path(target), state_dir=self.state_dir(target), log_dir=self.log_dir,
            trigger_words=tuple(target.trigger_words), root=root, init_weights=init,
            inputs=(toml, *files, *([init] if init else [])), family=self.project.family,
            progress_samples=self.progress_samples(target), run_cache=cache_url(cfg.cache, root),
            cluster=self.cluster)

    @cached_property
    def cluster(self) -> ClusterSettings | None:
        """The Ray cluster trainings and sample renders run on (None: this machine)."""
        return cluster_settings(self.project.config.cluster)

    def progress_samples(self, target: Target) -> ProgressSamples | None:
        if not target.train.sample_every_n_steps:
            return None

        prompt = sample_prompts(target, target.sample, self.project.config.captions.rules)[0]
        return ProgressSamples(prompt, target.sample, self.progress_dir(target))

    @property
    def report_dir(self) -> Path:
        return self.build_dir / "report"

    def progress_dir(self, target: Target) -> Path:
        """Images rendered during training (the report shows them as a strip)."""
        return self.report_dir / "img" / "progress" / target.name
