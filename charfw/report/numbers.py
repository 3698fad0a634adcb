"""What a target trains on, in numbers, from the plans alone (no image is decoded, no torch).

The same rules the build and the trainers use: size classes (rules.sizeclass), buckets
without upscaling (rules.buckets), batches per epoch (rules.buckets.batches_per_epoch),
captions (rules.captions).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from charfw.dataset.plan import Prepared, bucket_of
from charfw.layout import Layout
from charfw.project import Target
from charfw.rules.buckets import Size, batches_per_epoch
from charfw.rules.captions import caption
from charfw.rules.regularization import reg_repeats
from charfw.rules.sizeclass import batch_size, class_pair, resolution
from charfw.rules.training import scaled_schedule
from charfw.rules.validation import held_out_view, split_train_val


@dataclass
class Folder:
    set_id: str
    name: str          # "krnk girl_f0128"
    images: int
    repeats: int
    buckets: Counter   # bucket (w, h) -> images
    filled: Counter | None = None   # regularization folders: bucket -> samples per epoch after sd-scripts' fill

    @property
    def samples(self) -> int:
        return sum(self.filled.values()) if self.filled is not None else self.images * self.repeats

    def bucket_samples(self) -> Counter:
        return self.filled if self.filled is not None else Counter({b: n * self.repeats for b, n in self.buckets.items()})


@dataclass
class SizeClass:
    pair: str          # "LOW_LOW"
    resolution: tuple[int, int]
    batch: int
    folders: list[Folder] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(f.samples for f in self.folders)

    @property
    def batches(self) -> int:
        counts: Counter = Counter()
        for f in self.folders:
            counts.update(f.bucket_samples())
        return batches_per_epoch(list(counts.values()), self.batch)


@dataclass
class TargetNumbers:
    classes: list[SizeClass]
    steps: int
    batch_scale: int | str = 1     # the batches are the profile's x this; "auto": decided on the GPU

    @property
    def samples(self) -> int:
        return sum(c.samples for c in self.classes)

    @property
    def batches_per_epoch(self) -> int:
        return sum(c.batches for c in self.classes)

    @property
    def epochs(self) -> int:
        return -(-self.steps // self.batches_per_epoch) if self.batches_per_epoch else 0


def _folders(layout: Layout, sub) -> list[tuple[str, str, list[Prepared]]]:
    """(size-class pair, folder name, its images) of one subset's prepared images."""
    by_folder: dict[str, list[Prepared]] = {}
    for item in layout.plans[sub.set.id]:
        by_folder.setdefault(item.folder, []).append(item)
    return [(class_pair(items[0].width, items[0].height, layout.project.family), name, items)
            for name, items in by_folder.items()]


def target_numbers(layout: Layout, target: Target) -> TargetNumbers:
    family, table = layout.project.family, layout.project.batch_table
    classes: dict[str, SizeClass] = {}
    s = target.train
    seed = s.seed if s.validation_seed is None else s.validation_seed
    for sub in target.subsets:
        for pair, name, items in _folders(layout, sub):
            kept = [i for i in sorted(items, key=lambda i: i.name) if not held_out_view(i.source.view.code,
                                                                                       s.validation_views)]
            items = split_train_val(kept, s.validation_split, seed)[0]   # what the trainers train on
            if not items:
                continue
            cls = classes.setdefault(pair, SizeClass(pair, resolution(pair, family), batch_size(pair, table)))
            cls.folders.append(Folder(sub.set.id, name, len(items), sub.repeats,
                                      Counter(bucket_of(i, family) for i in items)))
    regs: dict[str, list[tuple]] = {}
    for sub in target.reg_subsets:   # only in the size classes the target's own images train in (dataset.toml)
        for pair, name, items in _folders(layout, sub):
            if pair in classes:
                regs.setdefault(pair, []).append((sub, name, items))
    for pair, folders in regs.items():
        cls = classes[pair]
        fill = iter(reg_repeats(cls.samples, [sub.repeats for sub, _, items in folders for _ in items]))
        for sub, name, items in folders:
            filled = Counter()
            for item in items:
                filled[bucket_of(item, family)] += next(fill)
            cls.folders.append(Folder(sub.set.id, name, len(items), sub.repeats,
                                      Counter(bucket_of(i, family) for i in items), +filled))
    numbers = TargetNumbers(list(classes.values()), target.steps)
    scale = target.train.batch_scale if target.train.trainer == "embedded" else 1
    if scale == "auto":
        numbers.batch_scale = scale
    elif scale > 1:   # what the embedded trainer does with a fixed batch_scale (train.loop._grow_batches)
        grown = [replace(c, batch=c.batch * scale) for c in numbers.classes]
        steps, _, _ = scaled_schedule(target.steps, 0, numbers.batches_per_epoch,
                                      TargetNumbers(grown, target.steps).batches_per_epoch)
        numbers = TargetNumbers(grown, steps, scale)
    return numbers


@dataclass
class ImageRow:
    name: str          # source file name
    code: str
    caption: str
    prepared: list[tuple[str, tuple[int, int], Size]]   # (folder, size, bucket) per prepared copy


def image_rows(layout: Layout, set_id: str) -> list[ImageRow]:
    s = layout.project.sets[set_id]
    template = layout.project.config.captions.rules
    copies: dict = {}
    for item in layout.plans[set_id]:
        copies.setdefault(item.source.path, []).append(
            (item.folder, (item.width, item.height), bucket_of(item, layout.project.family)))
    return [ImageRow(src.path.name, src.view.code, caption(s.keywords, src.view, template), copies.get(src.path, []))
            for src in sorted(s.sources, key=lambda x: x.path.name)]
