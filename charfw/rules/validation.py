"""Which images a run holds out to measure its validation loss (docs/rules.md §6a), and when it measures.

Two ways, combinable: `validation_views` holds out every image of the listed view codes (the
embedded trainer's own: the loss on views the LoRA never saw shows overfitting to the trained
ones), then `validation_split` holds out a share of each training folder's remaining images at
random, exactly as sd-scripts' split_train_val does (so both trainers hold out the same files).
Regularization folders are never split. Pure functions: the trainer and the report call them.
"""

from __future__ import annotations

import math
import random

import numpy as np

NUM_VALIDATION_TIMESTEPS = 4   # sd-scripts: 200, 400, 600, 800 of 1000
VALIDATIONS_PER_RUN = 10       # validate_every_n_steps unset: this many times over the run


def split_train_val(names: list, split: float, seed: int) -> tuple[list, list]:
    """(training, validation) of one folder's images in file order, as sd-scripts splits them: shuffled by
    Python's `random` seeded with `seed`, the first ceil(n·(1-split)) train, the last round(n·split) validate
    (sd-scripts' own rounding: for some n one image is in both or in neither)."""
    if not split or not names:
        return list(names), []
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:math.ceil(len(shuffled) * (1 - split))], shuffled[len(shuffled) - round(len(shuffled) * split):]


def held_out_view(code: str | None, views) -> bool:
    """Whether an image of view code `code` ("f01"; None for a name that is no view code) is held out."""
    return code is not None and code in views


def validation_timesteps(num_train_timesteps: int) -> list[int]:
    """The fixed timesteps every validation image is measured at (sd-scripts: linspace without the ends)."""
    return [int(t) for t in np.linspace(0, num_train_timesteps, NUM_VALIDATION_TIMESTEPS + 2, dtype=int)[1:-1]]


def validation_every(setting: int | None, steps: int) -> int:
    """Steps between validations: the setting, else a tenth of the run."""
    return setting or max(1, steps // VALIDATIONS_PER_RUN)
