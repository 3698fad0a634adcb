"""Which samples make each batch: a pure function of (datasets, seed, batch index).

Like sd-scripts: every image appears `num_repeats` times per epoch (a regularization image as
often as sd-scripts' fill gives it), grouped by bucket, each bucket shuffled and cut into batches
of the dataset's batch size, then all batches of all datasets shuffled. Flip (50 % where flip_aug) and the colour
variant are drawn here too. Everything derives from the seed and the epoch number,
so a resumed run sees exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from charfw.rules.buckets import batches_per_epoch
from charfw.train.augment import COLOR_PROBABILITY, COLOR_VARIANTS
from charfw.train.dataset import Dataset


@dataclass(frozen=True)
class Sample:
    dataset: int
    image: int      # index into datasets[dataset].images
    flip: bool
    color: int      # 0 = unchanged, else the colour variant


def epoch_batches(datasets: list[Dataset], seed: int, epoch: int) -> list[tuple[Sample, ...]]:
    rng = random.Random(f"charfw-epoch/{seed}/{epoch}")
    batches: list[tuple[Sample, ...]] = []
    for d, ds in enumerate(datasets):
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(ds.images):
            buckets.setdefault(image.bucket, []).extend([i] * image.repeats)
        for bucket in sorted(buckets):
            members = buckets[bucket]
            rng.shuffle(members)
            for start in range(0, len(members), ds.batch_size):
                batches.append(tuple(_sample(rng, d, ds, i) for i in members[start:start + ds.batch_size]))
    rng.shuffle(batches)
    return batches


def bucket_counts(ds: Dataset) -> dict[tuple[int, int], int]:
    """Samples per bucket in one epoch: each image once per repeat."""
    counts: dict[tuple[int, int], int] = {}
    for image in ds.images:
        counts[image.bucket] = counts.get(image.bucket, 0) + image.repeats
    return counts


def _sample(rng: random.Random, d: int, ds: Dataset, i: int) -> Sample:
    subset = ds.subsets[ds.images[i].subset]
    flip = subset.flip_aug and rng.random() < 0.5
    color = 0
    if subset.color_aug and rng.random() < COLOR_PROBABILITY:
        color = rng.randrange(1, COLOR_VARIANTS + 1)
    return Sample(d, i, flip, color)


class BatchPlan:
    """Batch number n (counted over all epochs) -> its samples; epochs planned lazily."""

    def __init__(self, datasets: list[Dataset], seed: int):
        self.datasets, self.seed = datasets, seed
        self.per_epoch = sum(batches_per_epoch(list(bucket_counts(ds).values()), ds.batch_size) for ds in datasets)
        self._epoch, self._batches = -1, []

    def __getitem__(self, n: int) -> tuple[Sample, ...]:
        epoch, index = divmod(n, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.datasets, self.seed, epoch)
        return self._batches[index]
