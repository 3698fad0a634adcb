"""View-coded regularization (docs/rules.md §4a): which regularization images a target trains with, and how
often each appears per epoch.

A regularization folder holds generic figures named by view code like a character's sets. A target
takes the images of the codes its own images have, and only those: the prior it is regularized
towards is the same viewpoints, not arbitrary pictures. Their captions are the template's tags after
the class tokens alone. How often they appear is sd-scripts' rule, so both trainers agree.
"""

from __future__ import annotations


def paired_codes(own: set[str] | list[str], available: set[str] | dict[str, object]) -> list[str]:
    """The view codes (e.g. "f01") of a target's own images that a regularization folder also has, sorted."""
    return sorted(set(own) & set(available))


def reg_repeats(num_train_images: int, repeats: list[int]) -> list[int]:
    """How often each regularization image (in subset, then file order; `repeats`: its subset's num_repeats)
    appears per epoch, as sd-scripts' DreamBooth dataset fills them: one pass registers them with their own
    repeats until the dataset's images x repeats are matched, later passes add one repeat each until then;
    0 = never used (more reg images than the dataset needs)."""
    out = [0] * len(repeats)
    n, first = 0, True
    while repeats and n < num_train_images:
        for i, r in enumerate(repeats):
            step = r if first else 1
            out[i] += step
            n += step
            if n >= num_train_images:
                break
        first = False
    return out
