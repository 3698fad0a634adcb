"""The dataset config that kohya sd-scripts' `--dataset_config` accepts unchanged (docs/rules.md §4).

sd-scripts validates the file with a closed schema and rejects unknown keys, so
what we write is limited to the keys of charfw.dataset.schema (its config_util schema).
Paths are relative to the TOML file: run sd-scripts from the TOML's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from charfw.dataset.plan import Prepared
from charfw.families import Family
from charfw.project import Target
from charfw.rules.sizeclass import CLASS_PAIRS, batch_size, class_pair, resolution
from charfw.rules.training import dataset_color_aug


def dataset_config(target: Target, plans: dict[str, list[Prepared]], images_root: Path,
                   toml_dir: Path, batch_table: dict[str, int], family: Family,
                   masked: frozenset[str] = frozenset()) -> dict:
    """The config as a dict: one dataset per (width class, height class), subsets in set/size order, then
    the target's regularization subsets (`is_reg = true`) in the datasets its own images train in (sd-scripts
    fills each dataset's reg images up to its own image count); the subsets of `masked` sets carry
    `alpha_mask = true` (their images' alpha weights the loss)."""
    by_pair: dict[str, list[dict]] = {}
    s = target.train

    def subsets(sub, **extra):
        folders: dict[str, Prepared] = {}
        for item in plans[sub.set.id]:
            folders.setdefault(item.folder, item)
        for folder, item in folders.items():
            image_dir = Path(os.path.relpath(images_root / sub.set.id / folder, toml_dir)).as_posix()
            subset = {"image_dir": image_dir, "class_tokens": sub.set.class_tokens}
            if sub.repeats != target.repeats:
                subset["num_repeats"] = sub.repeats
            subset["flip_aug"] = sub.set.symmetric
            subset.update(extra)
            if sub.set.id in masked:
                subset["alpha_mask"] = True
            yield class_pair(item.width, item.height, family), subset

    for sub in target.subsets:
        for pair, subset in subsets(sub):
            by_pair.setdefault(pair, []).append(subset)
    for sub in target.reg_subsets:
        for pair, subset in subsets(sub, is_reg=True):
            if pair in by_pair:
                by_pair[pair].append(subset)
    datasets = []
    for pair in sorted(by_pair, key=CLASS_PAIRS.index):
        w, h = resolution(pair, family)
        datasets.append({"resolution": [w, h], "batch_size": batch_size(pair, batch_table),
                         "subsets": by_pair[pair]})
    general = {"color_aug": dataset_color_aug(s.trainer, s.color_aug, s.extra_args), "enable_bucket": True,
               "bucket_no_upscale": True, "caption_extension": ".txt", "num_repeats": target.repeats}
    if s.validation_split:   # both trainers then hold out the same files (rules.validation)
        general["validation_split"] = s.validation_split
        general["validation_seed"] = s.seed if s.validation_seed is None else s.validation_seed
    return {"general": general, "datasets": datasets}


def render_toml(config: dict) -> str:
    """TOML text in the seed's layout: [general], then [[datasets]] each followed by its subsets."""
    lines = ["[general]"]
    lines += [f"{k} = {_value(v)}" for k, v in config["general"].items()]
    for ds in config["datasets"]:
        lines += ["", "[[datasets]]"]
        lines += [f"{k} = {_value(v)}" for k, v in ds.items() if k != "subsets"]
        for sub in ds["subsets"]:
            lines += ["", "[[datasets.subsets]]"]
            lines += [f"{k} = {_value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    s = str(v)
    if "'" not in s and "\n" not in s:
        return f"'{s}'"  # literal string: backslashes of Windows paths stay as they are
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
