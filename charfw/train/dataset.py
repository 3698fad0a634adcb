"""The sd-scripts dataset TOML (docs/rules.md §4) as the trainer's list of images.

Settings inherit as in sd-scripts: `[general]` -> `[[datasets]]` -> `[[datasets.subsets]]`.
`image_dir` is relative to the TOML's folder. Keys sd-scripts knows but this trainer
does not implement are accepted only at their no-op values, so a config never trains
differently from what it says (use the sd-scripts trainer for the rest).
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from charfw.dataset import schema
from charfw.errors import CharfwError
from charfw.rules.buckets import Placement, Size, bucket_resolutions, cover_placement, no_upscale_placement
from charfw.rules.regularization import reg_repeats
from charfw.rules.validation import held_out_view, split_train_val
from charfw.rules.viewcode import parse_view_code

log = logging.getLogger("charfw.train")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

IMPLEMENTED = {"image_dir", "num_repeats", "color_aug", "flip_aug", "caption_extension", "class_tokens", "alpha_mask",
               "is_reg", "validation_split", "validation_seed", "resolution", "batch_size", "enable_bucket", "bucket_no_upscale", "bucket_reso_steps",
               "min_bucket_reso", "max_bucket_reso"}
# Accepted at any value: they do not change what is learned here (separators matter only with
# shuffling or dropout, which must be off).
HARMLESS = {"cache_info", "caption_separator"}
# Accepted at any value with a note: the embedded trainer does its own thing.
NOTED = {"resize_interpolation": "it resizes with Lanczos", "custom_attributes": "they are for other tools"}
SUBSET_DEFAULTS = {k: schema.DEFAULTS[k] for k in ("num_repeats", "color_aug", "flip_aug", "caption_extension",
                                                   "class_tokens")}
DATASET_DEFAULTS = {k: schema.DEFAULTS[k] for k in ("resolution", "batch_size", "enable_bucket", "bucket_no_upscale",
                                                    "bucket_reso_steps", "min_bucket_reso", "max_bucket_reso",
                                                    "validation_split", "validation_seed")}


@dataclass(frozen=True)
class Subset:
    image_dir: Path
    name: str              # folder name, as sd-scripts records it in metadata
    class_tokens: str | None
    num_repeats: int
    flip_aug: bool
    color_aug: bool
    caption_extension: str
    alpha_mask: bool = False   # the images' alpha weights the loss (with masked_loss)
    img_count: int = 0         # images found in the folder (a reg subset's may not all be used)
    is_reg: bool = False       # regularization images: their loss is weighted by prior_loss_weight


@dataclass(frozen=True)
class TrainImage:
    path: Path
    caption: str
    size: Size
    placement: Placement
    subset: int            # index into the dataset's subsets
    sha256: str
    repeats: int = 1       # times per epoch: the subset's num_repeats; a reg image's as sd-scripts fills them

    @property
    def bucket(self) -> Size:
        return self.placement.bucket


@dataclass(frozen=True)
class Dataset:
    resolution: Size
    batch_size: int
    enable_bucket: bool
    bucket_no_upscale: bool
    bucket_reso_steps: int
    min_bucket_reso: int
    max_bucket_reso: int
    subsets: tuple[Subset, ...]
    images: tuple[TrainImage, ...]
    held_out: tuple[TrainImage, ...] = ()   # validation images: never trained on, their loss is reported

    @property
    def num_train_images(self) -> int:
        """Images x repeats, regularization images left out, as sd-scripts counts them."""
        return sum(i.repeats for i in self.images if not self.subsets[i.subset].is_reg)

    @property
    def num_reg_images(self) -> int:
        """Regularization images x their subsets' num_repeats (before the fill), as sd-scripts counts them."""
        return sum(s.num_repeats * s.img_count for s in self.subsets if s.is_reg)


def load_datasets(toml_path: Path, hold_out: tuple[str, ...] | frozenset[str] = ()) -> list[Dataset]:
    """Parse the TOML, list every image with its caption, size, bucket and content hash; the images of the
    view codes in `hold_out` and the TOML's validation_split go to `held_out` (rules.validation)."""
    toml_path = Path(toml_path)
    try:
        config = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CharfwError("dataset config not found", file=toml_path) from None
    except tomllib.TOMLDecodeError as exc:
        raise CharfwError(f"not valid TOML: {exc}", file=toml_path) from None
    general = config.get("general", {})
    _check_keys(general, toml_path, "general", "general")
    raw_datasets = config.get("datasets") or []
    if not raw_datasets:
        raise CharfwError("no [[datasets]] in the dataset config", file=toml_path)
    out = []
    for d, raw in enumerate(raw_datasets):
        _check_keys(raw, toml_path, f"datasets[{d}]", "datasets")
        out.append(_dataset(general, raw, toml_path, d, frozenset(hold_out)))
    return out


def _check_keys(table: dict, toml_path: Path, where: str, level: str) -> None:
    """Keys as sd-scripts' schema allows them at this level; what this trainer does not
    implement only at the value that means "off" (anything else would train differently)."""
    for key, value in table.items():
        if key not in schema.SD_SCRIPTS_KEYS[level]:
            raise CharfwError(f"unknown key {key!r} (sd-scripts would reject it)", file=toml_path,
                              field=f"{where}.{key}")
        if key in IMPLEMENTED or key in HARMLESS or key == "subsets":
            continue
        default = schema.DEFAULTS[key]
        if value == default or (default is None and value in ("", {})):
            continue
        if key in NOTED:
            log.warning("%s: %s.%s = %r is ignored by the embedded trainer (%s)", toml_path, where, key, value,
                        NOTED[key])
            continue
        raise CharfwError(f"{key} = {value!r} is not supported by the embedded trainer "
                          "(use trainer: sd-scripts)", file=toml_path, field=f"{where}.{key}")


def _pick(key: str, defaults: dict, *tables: dict):
    """The innermost table that sets `key` wins."""
    for table in reversed(tables):
        if key in table:
            return table[key]
    return defaults[key]


def _resolution(value, toml_path: Path, where: str) -> Size:
    if value is None:
        raise CharfwError("resolution is required", file=toml_path, field=f"{where}.resolution")
    if isinstance(value, int):
        value = [value, value]
    if (not isinstance(value, list) or len(value) not in (1, 2)
            or not all(isinstance(v, int) and v >= 64 for v in value)):
        raise CharfwError(f"resolution must be [width, height] of at least 64, not {value!r}",
                          file=toml_path, field=f"{where}.resolution")
    return (value[0], value[-1])


def _dataset(general: dict, raw: dict, toml_path: Path, d: int, hold_out: frozenset[str]) -> Dataset:
    where = f"datasets[{d}]"
    get = lambda k: _pick(k, DATASET_DEFAULTS, general, raw)  # noqa: E731
    resolution = _resolution(get("resolution"), toml_path, where)
    batch_size, steps = get("batch_size"), get("bucket_reso_steps")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CharfwError("batch_size must be a positive integer", file=toml_path, field=f"{where}.batch_size")
    if not isinstance(steps, int) or steps < 8 or steps % 8:
        raise CharfwError("bucket_reso_steps must be a multiple of 8", file=toml_path,
                          field=f"{where}.bucket_reso_steps")
    split, split_seed = _validation_split(get("validation_split"), get("validation_seed"), toml_path, where)
    subsets, images, reg, held = [], [], [], []
    for s, raw_sub in enumerate(raw.get("subsets") or []):
        sub_where = f"{where}.subsets[{s}]"
        _check_keys(raw_sub, toml_path, sub_where, "subsets")
        subset = _subset(general, raw, raw_sub, toml_path, sub_where)
        listed = [(path, caption, s) for path, caption in _list_images(subset, toml_path, sub_where)]
        subsets.append(replace(subset, img_count=len(listed)))
        if subset.is_reg:   # never split (sd-scripts)
            reg.extend((*item, subset.num_repeats) for item in listed)
            continue
        kept = [item for item in listed if not held_out_view(_code(item[0]), hold_out)]
        trained, validated = split_train_val(kept, split, split_seed)
        held += [(*item, 1) for item in listed if item not in kept] + [(*item, 1) for item in validated]
        images.extend((*item, subset.num_repeats) for item in trained)
    if not images:
        raise CharfwError("the dataset has no images" + (" but regularization images" if reg else "")
                          + (" left after holding out the validation images" if held else ""),
                          file=toml_path, field=where)
    filled = reg_repeats(sum(r for *_, r in images), [r for *_, r in reg])
    images += [(*item[:3], n) for item, n in zip(reg, filled) if n]
    ds = Dataset(resolution, batch_size, bool(get("enable_bucket")), bool(get("bucket_no_upscale")), steps,
                 get("min_bucket_reso"), get("max_bucket_reso"), tuple(subsets), ())
    return replace(ds, images=tuple(_place(ds, *item) for item in images),
                   held_out=tuple(_place(ds, *item) for item in held))


def _code(path: Path) -> str | None:
    view = parse_view_code(path.stem)
    return view.code if view else None


def _validation_split(split, seed, toml_path: Path, where: str) -> tuple[float, int]:
    if not isinstance(split, (int, float)) or isinstance(split, bool) or not 0 <= split < 1:
        raise CharfwError(f"validation_split must be a number from 0 to below 1, not {split!r}", file=toml_path,
                          field=f"{where}.validation_split")
    if split and not isinstance(seed, int):
        raise CharfwError("validation_split needs validation_seed (an integer) here: without it sd-scripts draws "
                          "the split at random, so the trainers would hold out different images", file=toml_path,
                          field=f"{where}.validation_seed")
    return float(split), seed


def _subset(general: dict, raw: dict, raw_sub: dict, toml_path: Path, where: str) -> Subset:
    get = lambda k: _pick(k, SUBSET_DEFAULTS, general, raw, raw_sub)  # noqa: E731
    if "image_dir" not in raw_sub:
        raise CharfwError("image_dir is required", file=toml_path, field=f"{where}.image_dir")
    image_dir = Path(raw_sub["image_dir"])
    if not image_dir.is_absolute():
        image_dir = toml_path.parent / image_dir
    if not image_dir.is_dir():
        raise CharfwError(f"image_dir {image_dir} is not a folder", file=toml_path, field=f"{where}.image_dir")
    repeats = get("num_repeats")
    if not isinstance(repeats, int) or repeats < 1:
        raise CharfwError("num_repeats must be a positive integer", file=toml_path, field=f"{where}.num_repeats")
    ext = get("caption_extension") or ""
    if ext and not ext.startswith("."):
        ext = "." + ext
    return Subset(image_dir, image_dir.name, get("class_tokens"), repeats, bool(get("flip_aug")),
                  bool(get("color_aug")), ext, bool(raw_sub.get("alpha_mask", False)),
                  is_reg=bool(raw_sub.get("is_reg", False)))


def _list_images(subset: Subset, toml_path: Path, where: str) -> list[tuple[Path, str]]:
    """Images of one folder (sorted) with their captions; class_tokens when a caption file is missing."""
    out = []
    for path in sorted(p for p in subset.image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
        caption_file = path.with_suffix(subset.caption_extension) if subset.caption_extension else None
        caption = None
        if caption_file is not None and caption_file.is_file():
            lines = caption_file.read_text(encoding="utf-8").splitlines()
            caption = lines[0].strip() if lines else ""
        if caption is None:
            if subset.class_tokens is None:
                raise CharfwError(f"no caption file {caption_file.name if caption_file else ''} and no class_tokens "
                                  "for the subset", file=path)
            caption = subset.class_tokens
        out.append((path, caption))
    if not out:
        raise CharfwError(f"no images in {subset.image_dir}", file=toml_path, field=f"{where}.image_dir")
    return out


def _place(ds: Dataset, path: Path, caption: str, subset: int, repeats: int) -> TrainImage:
    data = path.read_bytes()
    try:
        with Image.open(path) as im:
            size = im.size
    except Exception as exc:
        raise CharfwError(f"cannot read image ({exc})", file=path) from None
    placement = place(size, ds)
    if placement.bucket[0] < 1 or placement.bucket[1] < 1:
        raise CharfwError(f"image {size[0]}x{size[1]} is smaller than one bucket step ({ds.bucket_reso_steps} px)",
                          file=path)
    return TrainImage(path, caption, size, placement, subset, hashlib.sha256(data).hexdigest(), repeats)


def place(size: Size, ds: Dataset) -> Placement:
    """The bucket of an image of `size` in dataset `ds`, by sd-scripts' rules."""
    w, h = size
    if ds.enable_bucket and ds.bucket_no_upscale:
        return no_upscale_placement(w, h, ds.resolution[0] * ds.resolution[1], ds.bucket_reso_steps)
    if ds.enable_bucket:
        buckets = bucket_resolutions(ds.resolution, ds.min_bucket_reso, ds.max_bucket_reso, ds.bucket_reso_steps)
        return cover_placement(w, h, buckets)
    return cover_placement(w, h, [ds.resolution])


def tag_frequency(datasets: list[Dataset]) -> dict[str, dict[str, int]]:
    """{folder name: {tag: count}} over captions (not repeats), lower-cased, as sd-scripts records it."""
    freq: dict[str, dict[str, int]] = {}
    for ds in datasets:
        seen: dict[str, dict[str, int]] = {}
        for image in ds.images:
            counts = seen.setdefault(ds.subsets[image.subset].name, {})
            for tag in image.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
        for name, counts in seen.items():
            freq.setdefault(name, counts)  # a folder used by several datasets counts once
    return freq
