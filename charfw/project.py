"""The resolved workspace: image sets, targets and the project that holds them.

What the manifests mean once every level's settings are merged; no YAML, no paths of
outputs (charfw.layout), no doit. A *set* is one folder of view-coded source images (a
face set or an outfit's body set). A *target* is one LoRA: a face (its face set), an
outfit (body set + face set) or a group (its member outfits' data), named by its keyword,
which is also its file name in `dist/`. A *regularization set* holds one view code's images of a
regularization folder (generic figures); a target trains with those whose codes it has itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from charfw.config.models import Character, CompressSettings, MergeSettings, SampleSettings, TrainSettings, Workspace
from charfw.families import Family
from charfw.rules.sizeclass import batch_table
from charfw.rules.training import DEFAULT_STEPS
from charfw.rules.viewcode import ViewCode

TargetKind = Literal["face", "outfit", "group"]


@dataclass(frozen=True)
class Source:
    path: Path
    view: ViewCode

    @cached_property
    def stem(self) -> str:  # asked for ~20,000 times in a 100-character workspace
        return self.path.stem


@dataclass
class ImageSet:
    id: str  # "krnk/face", "krnk/sf"
    kind: Literal["f", "b"]
    folder: Path
    sources: list[Source]
    class_tokens: str  # "krnk girl": the subset's class_tokens and its folder names
    keywords: list[str]  # first caption tags: "krnk" or "krnksf, krnk" (+ extra tags)
    sizes: list[int]
    background: tuple[int, int, int]
    symmetric: bool
    manifest: Path


@dataclass
class Generation:
    """A set whose images the generate stage proposes (docs/rules.md §2b): candidates per view code, picked
    into `folder` by the user. Kept even while the set has no images: that is when it is needed."""

    set_id: str          # "krnk/face"; "_reg/<name>" for a regularization folder
    kind: str            # the view codes' set letters it holds: "f", "b", or "fb" (a regularization folder)
    folder: Path         # the set's image folder: picks go there
    background: tuple[int, int, int]
    symmetric: bool
    settings: object     # charfw.config.models.GenerateSettings, the character's (and outfit's) merged
    manifest: Path


@dataclass
class Subset:
    set: ImageSet
    repeats: int


@dataclass
class Target:
    name: str
    kind: TargetKind
    subsets: list[Subset]
    repeats: int  # the dataset's general num_repeats
    trigger_words: list[str]
    train: TrainSettings
    merge: MergeSettings
    compress: CompressSettings
    sample: SampleSettings
    init: str | None  # target whose LoRA this one starts from
    manifest: Path
    lora: Path | None = None  # a LoRA trained elsewhere that stands for this target's training
    weights_origin: tuple[Path, int | None, str] | None = None  # where merge.weights was set, for errors
    reg_subsets: list[Subset] = field(default_factory=list)  # regularization sets of the target's own view codes
    block_weights: dict[str, float] = field(default_factory=dict)  # merge.weights parsed, per block

    @property
    def steps(self) -> int:
        return self.train.steps or DEFAULT_STEPS[self.kind]


@dataclass
class Skipped:
    """A character (or a group needing it) left out of the build until its images are there."""

    reason: str          # file: field: what is missing
    keywords: set[str]   # its targets' names


@dataclass
class Project:
    root: Path
    config: Workspace
    family: Family       # the base model's, which decides sizes, trainer and block maps
    sets: dict[str, ImageSet] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    characters: dict[str, Character] = field(default_factory=dict)
    skipped: dict[str, Skipped] = field(default_factory=dict)   # unfinished characters and their groups
    reg_sets: dict[str, ImageSet] = field(default_factory=dict)  # "_reg/<name>/<code>": one view code each
    generations: dict[str, Generation] = field(default_factory=dict)   # sets with a generate section

    @property
    def all_sets(self) -> dict[str, ImageSet]:
        """The characters' sets and the regularization sets: everything the images stage prepares."""
        return {**self.sets, **self.reg_sets} if self.reg_sets else self.sets

    @property
    def batch_table(self) -> dict[str, int]:
        return batch_table(self.config.batch_profile, self.family)

    @property
    def build_dir(self) -> Path:
        return self.root / self.config.build

    @property
    def dist_dir(self) -> Path:
        return self.root / self.config.dist

    def trained_targets(self) -> list[Target]:
        """Targets the build trains (the others declare a LoRA trained elsewhere)."""
        return [t for t in self.targets.values() if t.lora is None]
