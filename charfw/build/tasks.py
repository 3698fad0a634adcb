"""The doit stages. Each task declares its files and exactly one `config_changed`
holding every manifest value it reads, so doit reruns a task only when what it
would write changes.

    images    sources -> RGB PNGs per size     (per set)
    captions  view codes -> .txt per image     (per set)
    dataset   sd-scripts dataset TOML          (per target)
    train     LoRA training                    (per target without a declared `lora:`)
    merge     block weights baked in           (per target)
    compress  SVD resize -> dist/<name>        (per target)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from doit.tools import config_changed

from charfw.build import actions
from charfw.build.training import TrainJob, is_trained
from charfw.config.workspace import ARCH, Project, Target, load_project
from charfw.dataset.plan import Prepared, plan_set
from charfw.dataset.toml import dataset_config, render_toml
from charfw.errors import CharfwError
from charfw.rules.captions import caption


class values_changed(config_changed):
    """doit's config_changed, shown by `doit info` as what it covers instead of every value."""

    def __init__(self, config, what: str):
        super().__init__(config)
        self.what = what

    def __str__(self) -> str:
        return f"manifest values read by this task changed ({self.what})"


class Build:
    """A loaded workspace and the paths of everything the build writes."""

    def __init__(self, project: Project):
        self.project = project
        self.images_root = project.build_dir / "images"
        self.datasets_dir = project.build_dir / "datasets"
        self.plans: dict[str, list[Prepared]] = {sid: plan_set(s) for sid, s in project.sets.items()}

    def rel(self, path: Path) -> str:
        """Paths in doit's database are relative, so a copied or moved workspace stays up to date."""
        return Path(os.path.relpath(path, self.project.root)).as_posix()

    def image_path(self, set_id: str, item: Prepared) -> Path:
        return self.images_root / set_id / item.folder / item.name

    def caption_path(self, set_id: str, item: Prepared) -> Path:
        return self.image_path(set_id, item).with_suffix(".txt")

    def dataset_files(self, target: Target) -> list[Path]:
        """Every prepared image and caption a target's dataset holds."""
        return [p for sub in target.subsets for i in self.plans[sub.set.id]
                for p in (self.image_path(sub.set.id, i), self.caption_path(sub.set.id, i))]

    def toml_path(self, target: str) -> Path:
        return self.datasets_dir / f"{target}.toml"

    def trained_path(self, target: Target) -> Path:
        """The target's trained LoRA: a declared file (trained elsewhere), else what `train` writes."""
        return target.lora or self.project.build_dir / "train" / f"{target.name}.safetensors"

    def train_job(self, target: Target) -> TrainJob:
        root, cfg = self.project.root, self.project.config
        files = self.dataset_files(target)
        init = self.trained_path(self.project.targets[target.init]) if target.init else None
        return TrainJob(
            name=target.name, settings=target.train, steps=target.steps,
            dataset_toml=self.toml_path(target.name), model=_model_ref(cfg.model, root),
            vae=_model_ref(cfg.vae, root) if cfg.vae else None, output=self.trained_path(target),
            state_dir=self.project.build_dir / "train" / f"{target.name}.state",
            log_dir=self.project.build_dir / "logs", trigger_words=target.trigger_words, root=root,
            init_weights=init, inputs=[self.toml_path(target.name), *files, *([init] if init else [])])

    def merged_path(self, target: Target) -> Path:
        return self.project.build_dir / "merged" / f"{target.name}.safetensors"

    def dist_path(self, target: Target) -> Path:
        return self.project.dist_dir / f"{target.name}.safetensors"

    def trained_targets(self):
        return [t for t in self.project.targets.values() if t.lora is None]

    # -- stages ------------------------------------------------------------------

    def task_images(self):
        """Composite transparency onto the background and write every size of every source."""
        for sid, s in self.project.sets.items():
            items = self.plans[sid]
            yield {
                "name": sid,
                "doc": f"{len(s.sources)} sources x {len(s.sizes)} sizes -> {len(items)} images",
                "actions": [(actions.images, [str(self.images_root / sid), items, s.background])],
                "file_dep": [self.rel(src.path) for src in s.sources],
                "targets": [self.rel(self.image_path(sid, i)) for i in items],
                "uptodate": [values_changed({
                    "background": list(s.background),
                    "images": [[self.rel(i.source.path), i.folder, i.width, i.height] for i in items],
                }, "background colour, sizes, folder names")],
                "clean": True,
            }

    def task_captions(self):
        """Write one caption per prepared image, derived from its view code (SPEC §3)."""
        template = self.project.config.captions.template
        for sid, s in self.project.sets.items():
            texts = {f"{i.folder}/{i.source.path.stem}.txt": caption(s.keywords, i.source.view, template)
                     for i in self.plans[sid]}
            yield {
                "name": sid,
                "doc": f"{len(texts)} captions starting {', '.join(s.keywords)}",
                "actions": [(actions.captions, [str(self.images_root / sid), texts])],
                "targets": [self.rel(self.caption_path(sid, i)) for i in self.plans[sid]],
                "uptodate": [values_changed(texts, "caption text of each image")],
                "clean": True,
            }

    def task_dataset(self):
        """Write each target's dataset TOML for sd-scripts' --dataset_config (SPEC §4)."""
        table = self.project.config.batch_table()
        for name, target in self.project.targets.items():
            path = self.toml_path(name)
            text = render_toml(dataset_config(target, self.plans, self.images_root, path.parent, table))
            deps = [self.rel(p) for p in self.dataset_files(target)]
            yield {
                "name": name,
                "doc": f"{target.kind} target {name}: {', '.join(sub.set.id for sub in target.subsets)}",
                "actions": [(actions.text_file, [str(path), text])],
                "file_dep": deps,
                "targets": [self.rel(path)],
                "uptodate": [values_changed(text, "dataset TOML text")],
                "clean": True,
            }

    def task_train(self):
        """Train each target's LoRA (embedded trainer or kohya sd-scripts, SPEC §6)."""
        for target in self.trained_targets():
            job = self.train_job(target)
            deps = [f"dataset:{target.name}"]
            if target.init and self.project.targets[target.init].lora is None:
                deps.append(f"train:{target.init}")
            s = target.train
            yield {
                "name": target.name,
                "doc": f"{s.trainer}: {s.network} dim {s.dim or 'default'}, {job.steps} steps"
                       + (f", from {target.init}" if target.init else ""),
                "actions": [(actions.train, [job])],
                "task_dep": deps,
                "targets": [self.rel(job.output)],
                "uptodate": [TrainedCheck(job)],
                "clean": [(actions.clean_training, [job])],
                "verbosity": 2,
            }

    def task_merge(self):
        """Bake each target's block weights into its trained LoRA (SPEC §8)."""
        from charfw.lora.blocks import format_weights, parse_weights

        for target in self.project.targets.values():
            weights = parse_weights(target.merge.weights, ARCH, self.project.config.presets)
            yield {
                "name": target.name,
                "doc": f"{target.merge.weights if isinstance(target.merge.weights, str) else 'custom'} weights",
                "actions": [(actions.merge, [str(self.trained_path(target)), str(self.merged_path(target)), weights])],
                "file_dep": [self.rel(self.trained_path(target))],
                "targets": [self.rel(self.merged_path(target))],
                "uptodate": [values_changed(format_weights(weights, ARCH), "block weights")],
                "clean": True,
            }

    def task_compress(self):
        """SVD-compress each merged LoRA into dist/<keyword>.safetensors (SPEC §9)."""
        for target in self.project.targets.values():
            settings = target.compress.model_dump()
            yield {
                "name": target.name,
                "doc": f"{settings['method']} {settings['value']:g}" if settings["enabled"] else "copy (compression off)",
                "actions": [(actions.compress, [str(self.merged_path(target)), str(self.dist_path(target)), settings])],
                "file_dep": [self.rel(self.merged_path(target))],
                "targets": [self.rel(self.dist_path(target))],
                "uptodate": [values_changed(settings, "compress settings")],
                "clean": True,
            }


class TrainedCheck:
    """doit uptodate: the LoRA exists and was trained from exactly these settings and inputs."""

    def __init__(self, job: TrainJob):
        self.job = job

    def __call__(self, task, values) -> bool:
        return is_trained(self.job)

    def __str__(self) -> str:
        return "no trained LoRA whose run key matches the current settings and inputs"


def _model_ref(value: str, root: Path) -> str:
    return value if value.startswith("builtin:") else str((root / value).resolve())


STAGES = ("images", "captions", "dataset", "train", "merge", "compress")


def load_tasks(root: str | Path) -> dict:
    """The names a dodo.py exposes to doit: its config and one task_<stage> per stage."""
    try:
        build = Build(load_project(Path(root)))
    except CharfwError as exc:
        print(f"charfw: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    build.project.build_dir.mkdir(parents=True, exist_ok=True)
    names: dict = {
        "DOIT_CONFIG": {
            "dep_file": str(build.project.build_dir / ".doit.db"),
            "default_tasks": list(STAGES),
            "verbosity": 1,
        },
    }
    for stage in STAGES:
        names[f"task_{stage}"] = getattr(build, f"task_{stage}")
    return names
