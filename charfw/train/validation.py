"""Validation loss: the held-out images' loss at fixed noise and timesteps, every few steps.

The images come from the datasets' `held_out` (rules.validation: validation_views, validation_split).
Each is measured unflipped, without colour augmentation, at sd-scripts' four timesteps (200, 400,
600, 800 of 1000), with noise drawn from a generator seeded by (validation seed, image): the same
noise at every validation, so the curve moves only with the adapters. The loss is the training
objective (masks, prior and SNR weights included), averaged over images and timesteps, logged as
sd-scripts logs it (`loss/validation/step_average`, `loss/validation/step_divergence`: minus the
training loss's moving average).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from charfw.rules.validation import validation_timesteps
from charfw.train.batch import batch_loss, compute_dtype
from charfw.train.conditioning import size_ids
from charfw.train.dataset import Dataset
from charfw.train.latents import LatentCache
from charfw.train.sampling import Sample

log = logging.getLogger("charfw.train")


def held_out_sets(datasets: list[Dataset]) -> list[Dataset]:
    """The held-out images as datasets of their own (same subsets and buckets), for a latent cache."""
    return [dataclasses.replace(ds, images=ds.held_out, held_out=()) for ds in datasets]


class Validator:
    """Measures the held-out images every `recipe.validation_every` steps and at the end."""

    def __init__(self, job, sd, network, accelerator, conditioner, datasets: list[Dataset], latents: LatentCache):
        self.job, self.sd, self.network, self.accelerator = job, sd, network, accelerator
        self.conditioner, self.datasets, self.latents = conditioner, datasets, latents
        self.samples = [Sample(d, i, False, 0) for d, ds in enumerate(datasets) for i in range(len(ds.images))]
        self.timesteps = torch.tensor(validation_timesteps(sd.noise_scheduler.config.num_train_timesteps))

    @property
    def images(self) -> int:
        return len(self.samples)

    def due(self, done: int) -> bool:
        return bool(self.samples) and (done % self.job.recipe.validation_every == 0 or done == self.job.steps)

    @torch.no_grad()
    def loss(self) -> float:
        """The mean loss over every held-out image and validation timestep."""
        recipe, acc, n = self.job.recipe, self.accelerator, len(self.timesteps)
        total = 0.0
        self.network.refresh(compute_dtype(acc))
        try:
            for k, s in enumerate(self.samples):
                image = self.datasets[s.dataset].images[s.image]
                x0 = self.latents.batch((s,)).expand(n, -1, -1, -1)
                mask = self.latents.masks((s,) * n, tuple(x0.shape[2:])) if recipe.masked_loss else None
                gen = torch.Generator().manual_seed(recipe.validation_seed * 1_000_003 + k)
                loss = batch_loss(self.sd, recipe, acc, x0, self.conditioner, [image.caption] * n,
                                  [size_ids(image.size, image.bucket, False)] * n, gen, mask, None, self.timesteps)
                total += float(loss)
        finally:
            self.network.release()
        return total / len(self.samples)

    def report(self, done: int, training_average: float | None) -> float:
        value = self.loss()
        scalars = {"loss/validation/step_average": value}
        if training_average is not None:
            scalars["loss/validation/step_divergence"] = value - training_average
        if self.accelerator.trackers:
            self.accelerator.log(scalars, step=done)
        log.info("%s: validation loss %.5f at step %d (%d held-out images)", self.job.name, value, done, self.images)
        return value
