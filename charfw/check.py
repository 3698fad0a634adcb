"""`charfw check`: validate the whole workspace without building anything.

Images are judged by their headers and their ends (charfw.dataset.plan.image_header), remembered
by (size, mtime_ns) in `build/.images.json` (charfw.filecache), the file every doit run keeps up
to date too: a check after a build reads no image. Decoding is the images stage's job; it names
an image that is damaged inside.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from charfw.config.yamlfile import load_yaml
from charfw.dataset.plan import bucket_of
from charfw.errors import CharfwError
from charfw.families import Family
from charfw.layout import Layout
from charfw.models.filekind import checkpoint_problem, lora_problem, safetensors_header, vae_problem
from charfw.project import Project
from charfw.rules.modelref import BUILTIN_MODELS, BUILTIN_PREFIX, builtin_name, is_builtin, resolve_model_ref
from charfw.rules.viewcode import missing_yaws, required_yaws
from charfw.workspace import WORKSPACE_FILE, load_project


def check_project(root: Path) -> tuple[Project, list[str]]:
    """Load and plan everything (raising CharfwError on the first problem); return warnings."""
    project = load_project(root)
    check_models(project)
    check_controlnets(project)
    for target in project.targets.values():
        if target.lora is not None:
            check_lora(target.lora, target.manifest)
    layout = Layout(project)  # every source's header (a file cut short fails here), every set's plan
    return project, check_warnings(layout)


def masked_loss_warnings(layout: Layout) -> list[str]:
    """A set trained with masked_loss whose images have no alpha: it trains unmasked (said by check and doit)."""
    return [f"{sub.set.folder}: masked_loss is set for {target.name}, but no image of the set has transparency: "
            "it trains unmasked" for target in layout.project.trained_targets() if target.train.masked_loss
            for sub in target.subsets if not layout.transparent(sub.set.id)]


def check_warnings(layout: Layout) -> list[str]:
    """What `charfw check` warns about, from the plans alone (no image decoded): the report's problems."""
    project = layout.project
    warnings = [f"{name} is left out of the build until it has images ({skipped.reason})"
                for name, skipped in project.skipped.items()]
    warnings += masked_loss_warnings(layout)
    for sid, s in project.sets.items():
        used = {item.source.path for item in layout.plans[sid]}
        largest = max(s.sizes)
        for src in s.sources:
            if src.path not in used:
                warnings.append(f"{src.path}: smaller than every size of its set ({', '.join(map(str, s.sizes))} "
                                "px, longer side): it is not trained on (images are never upscaled)")
            elif not any(i.size == largest for i in layout.plans[sid] if i.source.path == src.path):
                warnings.append(f"{src.path}: smaller than the set's largest size ({largest} px): it is missing "
                                "from the larger size folders")
        odd = odd_aspect(layout.plans[sid], project.family)
        if odd:
            warnings.append(f"{s.folder}: images of different aspect ratios train in different buckets ("
                            + ", ".join(f"{name}: {w}x{h}" for name, (w, h) in odd[:3])
                            + (f", {len(odd) - 3} more" if len(odd) > 3 else "")
                            + "; most are in another): give every image of a set the same aspect ratio")
        missing = missing_yaws((src.view.yaw for src in s.sources), s.symmetric)
        if missing:
            wanted = required_yaws(s.symmetric)
            warnings.append(f"{s.folder}: no image for yaw {', '.join(map(str, missing))} "
                            f"({'symmetric' if s.symmetric else 'asymmetric'} characters need "
                            f"{min(wanted)}-{max(wanted)})")
    return warnings


def odd_aspect(items, family: Family) -> list[tuple[str, tuple[int, int]]]:
    """(image, bucket) of each image outside its set's most common bucket, at the set's largest size
    that every image reaches: mixed aspect ratios split the set's batches into several buckets."""

    by_size: dict[int, list] = {}
    for item in items:
        by_size.setdefault(item.size, []).append(item)
    if not by_size:
        return []
    everyone = len({i.source.path for i in items})
    size = max((z for z, its in by_size.items() if len(its) == everyone), default=min(by_size))
    buckets = {i.source.path.name: bucket_of(i, family) for i in by_size[size]}
    common = Counter(buckets.values()).most_common(1)[0][0]
    return sorted((name, b) for name, b in buckets.items() if b != common)


def check_models(project: Project) -> None:
    """The base model and VAE exist and are what they claim, from their headers (pickles: tensors only)."""
    ws_file = project.root / WORKSPACE_FILE
    lines = load_yaml(ws_file)[1]
    for field, value in (("model", project.config.model), ("vae", project.config.vae)):
        if value is None:
            continue
        where = dict(file=ws_file, line=lines.get((field,)), field=field)
        if is_builtin(value):
            if builtin_name(value) not in BUILTIN_MODELS:
                known = ", ".join(BUILTIN_PREFIX + b for b in BUILTIN_MODELS)
                raise CharfwError(f"unknown built-in model {value!r}; built-in: {known}", **where)
            continue
        path = Path(resolve_model_ref(value, project.root))
        if not path.is_file():
            raise CharfwError(f"{field} file not found: {path}", **where)
        keys = _tensor_names(path, field, where)
        problem = checkpoint_problem(keys, project.family) if field == "model" else vae_problem(keys)
        if problem:
            label = project.family.label
            raise CharfwError(f"{path.name} is not an {label} {'checkpoint' if field == 'model' else 'VAE'}: {problem}",
                              **where)


def check_controlnets(project: Project) -> None:
    """Every generate section's ControlNet files: there, safetensors, of the workspace's family, of the
    declared kind as far as their names tell (headers only)."""
    from charfw.families import base
    from charfw.models.controlnet import check_kind, file_family, union_uses

    for gen in project.generations.values():
        layouts = []
        for use in gen.settings.controlnets:
            if is_builtin(use.model):
                layouts.append("union" if str(use.model).endswith("-union") else "ldm")
                continue
            path = Path(resolve_model_ref(use.model, gen.manifest.parent))
            if not path.is_file():
                raise CharfwError(f"ControlNet file not found: {path}", file=gen.manifest, field="generate.controlnets")
            found, _, layout = file_family(path)
            if found is not base(project.family):
                raise CharfwError(f"an {found.label} ControlNet, but the workspace's model is {project.family.label}",
                                  file=path)
            check_kind(path, use.kind)
            layouts.append(layout)
        try:
            union_uses(gen.settings.controlnets, layouts)
        except CharfwError as exc:
            raise CharfwError(exc.message, file=gen.manifest, field=exc.field) from None


def _tensor_names(path: Path, field: str, where: dict) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        try:
            return [k for k in safetensors_header(path) if k != "__metadata__"]
        except CharfwError as exc:
            raise CharfwError(f"{path.name}: {exc.message}", **where) from None
    from charfw.models.checkpoint import open_tensors  # a pickle: read with weights_only=True

    try:
        with open_tensors(path, field) as src:
            return list(src.keys())
    except CharfwError as exc:
        raise CharfwError(f"{path.name}: {exc.message}", **where) from None


def check_lora(path: Path, manifest: Path) -> None:
    """A declared `lora:` file is a readable LoRA (its header only)."""
    try:
        header = safetensors_header(path)
    except CharfwError as exc:
        raise CharfwError(f"lora: {path.name}: {exc.message}", file=manifest, field="lora") from None
    problem = lora_problem(k for k in header if k != "__metadata__")
    if problem:
        raise CharfwError(f"lora: {path.name} is not a LoRA: {problem}", file=manifest, field="lora")
