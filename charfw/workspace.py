"""Load a workspace: read every manifest, validate it, and resolve it into a charfw.project.Project.

Settings are layered field by field: workspace, workspace.<kind>, character, set; each
merged section is validated as a whole and errors name the level that set the value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, RootModel

from charfw.config.models import (Character, CompressSettings, GenerateSettings, Group, MergeSettings, Name, RegFolder,
                                  SampleSettings, TrainSettings, Workspace)
from charfw.config.yamlfile import Loc, load_yaml, validate
from charfw.errors import CharfwError
from charfw.families import DEFAULT, Family, family, from_checkpoint, of_builtin
from charfw.lora.blocks import parse_weights
from charfw.models.filekind import safetensors_header
from charfw.project import Generation, ImageSet, Project, Skipped, Source, Subset, Target, TargetKind
from charfw.recipe import network_spec
from charfw.rules.blocklr import BlockError
from charfw.rules.modelref import builtin_name, is_builtin, resolve_model_ref
from charfw.rules.names import name_problem
from charfw.rules.regularization import paired_codes
from charfw.rules.viewcode import parse_view_code

WORKSPACE_FILE = "charfw.yaml"
CHARACTER_FILE = "character.yaml"
GROUPS_FILE = "groups.yaml"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
IGNORED_SUFFIXES = {".txt", ".md", ".yaml", ".yml", ".json"}  # notes may sit beside images
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255)}
KIND_DEFAULTS = {  # the seed's per-kind choices, beneath every user setting
    "face": {"merge": {"weights": "FACE"}},
    "outfit": {"merge": {"weights": "BODY"}},
    "group": {"merge": {"weights": "BODY"}},
}
PARTIAL = {"partial": True}  # one level's settings; cross-field rules apply to the merged result
REG_PREFIX = "_reg"   # regularization set ids: "_reg/<name>/<code>" (no character's name begins with "_")
RegSets = list[tuple[RegFolder, dict[str, ImageSet]]]   # per regularization folder: view code -> its set


class _Groups(RootModel[dict[Name, Group]]):
    pass


@dataclass
class _Layer:
    """One level's settings with where they came from, for errors in the merged result."""

    stages: BaseModel | None
    file: Path
    lines: dict[Loc, int]
    prefix: Loc


def load_project(root: str | Path) -> Project:
    """Read and validate the whole workspace at `root`; raise CharfwError on the first problem."""
    root = Path(root).resolve()
    ws_file = root / WORKSPACE_FILE
    if not ws_file.exists():
        raise CharfwError(f"no {WORKSPACE_FILE} here: a workspace needs one naming its base model "
                          "(`model: models/your-sd15-checkpoint.safetensors`)", file=ws_file)
    data, lines = load_yaml(ws_file)
    config = validate(Workspace, data or {}, file=ws_file, lines=lines, context=PARTIAL)
    project = Project(root=root, config=config, family=_family(config, root, ws_file, lines))
    ws_layers = [_Layer(config, ws_file, lines, ())]
    chars_dir = root / config.characters
    if not chars_dir.is_dir():
        raise CharfwError("characters folder not found", file=chars_dir, field="characters")

    regs_of = {"": _regularization(project, config.regularization, "", ws_file, lines)}
    for manifest in sorted(chars_dir.glob(f"*/{CHARACTER_FILE}")):
        try:
            _load_character(project, manifest, ws_layers, regs_of)
        except EmptySet as exc:  # a character still being set up: the others build
            sets = [sid for sid in project.generations if sid.startswith(manifest.parent.name + "/")]
            hint = (f"; its candidates are made into {config.build}/candidates/{sets[0]}/: pick views with "
                    f"`charfw pick {sets[0]} CODE N`") if sets else ""
            _drop_character(project, manifest, str(exc) + hint)
    groups_file = chars_dir / GROUPS_FILE
    if groups_file.exists():
        _load_groups(project, groups_file, ws_layers)
    _pair_regularization(project, regs_of)
    _check_finishing(project)
    return project


def _family(config: Workspace, root: Path, ws_file: Path, lines: dict) -> Family:
    """The base model's family: from a builtin's name or a safetensors header, checked against `family:`.

    A file that cannot be read here (missing, or a pickle) leaves it to `family:` (else
    families.DEFAULT); `charfw check` and the loader still refuse a wrong file.
    """

    found = None
    if is_builtin(config.model):
        found = of_builtin(builtin_name(config.model))
    else:
        path = Path(resolve_model_ref(config.model, root))
        if path.suffix.lower() == ".safetensors" and path.is_file():
            try:
                found = from_checkpoint(k for k in safetensors_header(path) if k != "__metadata__")
            except CharfwError:
                found = None  # unreadable: charfw check says why
    chosen = family(config.family) if config.family else None
    if chosen and found and found is not chosen and chosen.variant_of != found.name:
        raise CharfwError(f"the model is an {found.label} checkpoint but `family: {config.family}` is set; "
                          f"set `family: {found.name}` or remove the line (it is read from the model)",
                          file=ws_file, line=lines.get(("family",)), field="family")
    return chosen or found or DEFAULT   # a variant set in charfw.yaml for a file that does not mark itself


def _default_sizes(project: Project) -> list[int]:
    return list(project.family.size_classes.default_sizes)


def _background(value) -> tuple[int, int, int]:
    return BACKGROUNDS[value] if isinstance(value, str) else tuple(value)


def _load_character(project: Project, manifest: Path, ws_layers: list[_Layer], regs_of: dict[str, RegSets]) -> None:
    data, lines = load_yaml(manifest)
    char = validate(Character, data or {}, file=manifest, lines=lines, context=PARTIAL)
    name = manifest.parent.name
    problem = name_problem(name)
    if problem:  # the folder's name becomes its set ids and its report page's name
        raise CharfwError(f"the character's folder name {name!r} {problem}", file=manifest)
    project.characters[name] = char
    cfg = project.config
    char_layer = _Layer(char, manifest, lines, ())
    background = _background(char.background)
    regs_of[name] = (regs_of[""] if char.regularization is None
                     else _regularization(project, char.regularization, name, manifest, lines))

    _add_generations(project, name, char, manifest, background)
    face = ImageSet(
        id=f"{name}/face", kind="f", folder=manifest.parent / char.face.folder,
        sources=[], class_tokens=f"{char.keyword} {char.class_word}",
        keywords=[char.keyword, *char.tags], sizes=char.face.sizes or cfg.sizes.face or _default_sizes(project),
        background=background, symmetric=char.symmetric, manifest=manifest)
    face.sources = scan_sources(face.folder, "f", manifest, ("face", "folder"), lines)
    project.sets[face.id] = face
    face_repeats = char.face.repeats or cfg.repeats.face
    _add_target(project, Target(
        name=char.keyword, kind="face", subsets=[Subset(face, face_repeats)], repeats=face_repeats,
        trigger_words=[char.keyword], init=None, manifest=manifest,
        lora=_lora_file(char.face.lora, manifest, lines, ("face", "lora")),
        **_settings("face", ws_layers + [char_layer, _Layer(char.face, manifest, lines, ("face",))], cfg)))

    for oname, outfit in char.outfits.items():
        body = ImageSet(
            id=f"{name}/{oname}", kind="b", folder=manifest.parent / (outfit.folder or oname),
            sources=[], class_tokens=f"{outfit.keyword} {char.class_word}",
            keywords=[outfit.keyword, char.keyword, *outfit.tags], sizes=outfit.sizes or cfg.sizes.body or _default_sizes(project),
            background=background, symmetric=char.symmetric, manifest=manifest)
        body.sources = scan_sources(body.folder, "b", manifest, ("outfits", oname, "folder"), lines)
        project.sets[body.id] = body
        repeats = outfit.repeats or cfg.repeats.body
        subsets = [Subset(body, repeats)]
        if outfit.include_face:
            subsets.append(Subset(face, outfit.face_repeats or repeats))
        _add_target(project, Target(
            name=outfit.keyword, kind="outfit", subsets=subsets, repeats=repeats,
            trigger_words=[outfit.keyword, char.keyword],
            init=char.keyword if outfit.init == "face" else None, manifest=manifest,
            lora=_lora_file(outfit.lora, manifest, lines, ("outfits", oname, "lora")),
            **_settings("outfit", ws_layers + [char_layer, _Layer(outfit, manifest, lines, ("outfits", oname))], cfg)))


def _add_generations(project: Project, name: str, char: Character, manifest: Path, background) -> None:
    """The sets the generate stage makes candidates for: the face set from the character's section, each
    outfit's body set from the outfit's laid over it (its prompt added to the character's)."""
    wanted = [(f"{name}/face", "f", char.face.folder, None)]
    wanted += [(f"{name}/{oname}", "b", outfit.folder or oname, outfit.generate)
               for oname, outfit in char.outfits.items()]
    for set_id, kind, folder, own in wanted:
        if char.generate is None and own is None:
            continue
        merged = char.generate.model_dump(exclude_unset=True) if char.generate else {}
        if own is not None:
            extra = own.model_dump(exclude_unset=True)
            prompts = [p for p in (merged.get("prompt"), extra.get("prompt")) if p]
            merged.update(extra)
            if prompts:
                merged["prompt"] = ", ".join(prompts)
        project.generations[set_id] = Generation(set_id, kind, manifest.parent / folder, background, char.symmetric,
                                                 GenerateSettings.model_validate(merged), manifest)


def _drop_character(project: Project, manifest: Path, reason: str) -> None:
    """Leave out a character whose images are not there yet, remembering which keywords it has."""
    name = manifest.parent.name
    char = project.characters.pop(name)
    for sid in [sid for sid in project.sets if sid.startswith(name + "/")]:
        del project.sets[sid]
    for tname in [t.name for t in project.targets.values() if t.manifest == manifest]:
        del project.targets[tname]
    project.skipped[name] = Skipped(reason, {char.keyword, *(o.keyword for o in char.outfits.values())})


def _load_groups(project: Project, groups_file: Path, ws_layers: list[_Layer]) -> None:
    data, lines = load_yaml(groups_file)
    groups = validate(_Groups, data or {}, file=groups_file, lines=lines, context=PARTIAL).root
    for gname, group in groups.items():
        waiting = next(((m, c) for m in group.members for c, skip in project.skipped.items() if m in skip.keywords),
                       None)
        if waiting is not None:
            project.skipped[gname] = Skipped(f"{groups_file}: {gname}: member {waiting[0]} belongs to "
                                             f"{waiting[1]}, which has no images yet", {gname})
            continue
        subsets: list[Subset] = []
        words: list[str] = []
        repeats = group.repeats or project.config.repeats.group
        for i, member in enumerate(group.members):
            target = project.targets.get(member)
            if target is None or target.kind != "outfit":
                known = ", ".join(sorted(t.name for t in project.targets.values() if t.kind == "outfit")) or "none"
                raise CharfwError(f"unknown group member {member!r} (outfit keywords: {known})",
                                  file=groups_file, line=lines.get((gname, "members", i)),
                                  field=f"{gname}.members")
            for sub in target.subsets:
                if all(s.set is not sub.set for s in subsets):
                    subsets.append(Subset(sub.set, repeats))
            words += [w for w in target.trigger_words if w not in words]
        _add_target(project, Target(
            name=gname, kind="group", subsets=subsets, repeats=repeats, trigger_words=words,
            init=None, manifest=groups_file, lora=_lora_file(group.lora, groups_file, lines, (gname, "lora")),
            **_settings("group", ws_layers + [_Layer(group, groups_file, lines, (gname,))], project.config)))


def _regularization(project: Project, regs: dict[str, RegFolder], owner: str, manifest: Path,
                    lines: dict[Loc, int]) -> RegSets:
    """The regularization sets one manifest declares, one per view code of each folder: a target then takes
    exactly the codes it has. `owner`: the character declaring them ("" for the workspace)."""
    out: RegSets = []
    for rname, reg in regs.items():
        loc = ("regularization", rname, "folder")
        base_id = f"{REG_PREFIX}/{rname}{'@' + owner if owner else ''}"
        folder = manifest.parent / reg.folder
        if reg.generate is not None:   # generic figures made by the generate stage, picked into the folder
            project.generations[base_id] = Generation(base_id, "fb", folder, _background(reg.background),
                                                      reg.symmetric, reg.generate, manifest)
            if not folder.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
                out.append((reg, {}))
                continue
        try:
            sources = scan_sources(folder, None, manifest, loc, lines)
        except EmptySet as exc:   # unlike a character's set, never "still being set up"
            raise CharfwError(exc.message, file=exc.file, line=exc.line, field=exc.field) from None
        by_code: dict[str, list[Source]] = {}
        for src in sources:
            by_code.setdefault(src.view.code, []).append(src)
        sets = {}
        for code, srcs in by_code.items():
            sid = f"{base_id}/{code}"
            sizes = getattr(project.config.sizes, "face" if code[0] == "f" else "body") or _default_sizes(project)
            sets[code] = project.reg_sets[sid] = ImageSet(
                id=sid, kind=code[0], folder=folder, sources=srcs, class_tokens=reg.class_word,
                keywords=[reg.class_word], sizes=sizes, background=_background(reg.background),
                symmetric=reg.symmetric, manifest=manifest)
        out.append((reg, sets))
    return out


def _pair_regularization(project: Project, regs_of: dict[str, RegSets]) -> None:
    """Give every target the regularization sets of the view codes its own images train on (its characters'
    folders, in order; held-out views are not trained on), and keep only the sets some target uses."""
    used: set[str] = set()
    for target in project.targets.values():
        held_out = set(target.train.validation_views)
        codes = {src.view.code for sub in target.subsets for src in sub.set.sources} - held_out
        owners = dict.fromkeys(sub.set.id.split("/", 1)[0] for sub in target.subsets)
        for owner in owners:
            for reg, sets in regs_of.get(owner, []):
                for code in paired_codes(codes, sets):
                    s = sets[code]
                    if all(r.set is not s for r in target.reg_subsets):
                        target.reg_subsets.append(Subset(s, reg.repeats))
                        used.add(s.id)
    project.reg_sets = {sid: s for sid, s in project.reg_sets.items() if sid in used}


def _lora_file(value: str | None, manifest: Path, lines: dict[Loc, int], loc: Loc) -> Path | None:
    if value is None:
        return None
    path = (manifest.parent / value).resolve()
    if not path.is_file():
        raise CharfwError(f"LoRA file not found: {path}", file=manifest, line=lines.get(loc), field=".".join(loc))
    if path.suffix != ".safetensors":
        raise CharfwError("a LoRA file must be .safetensors", file=manifest, line=lines.get(loc), field=".".join(loc))
    return path


def _add_target(project: Project, target: Target) -> None:
    if target.name in project.targets:
        other = project.targets[target.name]
        raise CharfwError(f"target name {target.name!r} is already used by {other.manifest}",
                          file=target.manifest, field="keyword")
    project.targets[target.name] = target


def _settings(kind: TargetKind, layers: list[_Layer], cfg: Workspace) -> dict:
    """Merge train/merge/compress/sample field by field: workspace, workspace.<kind>, character, set."""
    kind_layer = _Layer(getattr(cfg, kind), layers[0].file, layers[0].lines, (kind,))
    layers = [layers[0], kind_layer, *layers[1:]]
    out: dict = {"weights_origin": None}
    for section, model in (("train", TrainSettings), ("merge", MergeSettings), ("compress", CompressSettings),
                           ("sample", SampleSettings)):
        merged = dict(KIND_DEFAULTS[kind].get(section, {}))
        last = layers[0]
        for layer in layers:
            part = getattr(layer.stages, section, None)
            if part is not None:
                merged.update(part.model_dump(exclude_unset=True))
                last = layer
                if section == "merge" and "weights" in part.model_fields_set:
                    loc = layer.prefix + ("merge", "weights")
                    out["weights_origin"] = (layer.file, layer.lines.get(loc), ".".join(map(str, loc)))
        out[section] = validate(model, merged, file=last.file, lines=last.lines, prefix=last.prefix + (section,))
    return out


def scan_sources(folder: Path, kind: str | None, manifest: Path, field_loc: Loc, lines: dict[Loc, int]) -> list[Source]:
    """The view-coded images of one set folder, checked against docs/rules.md §2 (`kind` None: f and b mixed)."""
    field_name = ".".join(field_loc)
    line = lines.get(field_loc) or lines.get(field_loc[:-1])
    if not folder.is_dir():
        raise CharfwError(f"image folder not found: {folder}", file=manifest, line=line, field=field_name)
    sources: dict[str, Source] = {}
    with os.scandir(folder) as it:  # entries know whether they are folders: no stat per image
        entries = sorted((e.name, e.is_dir()) for e in it)
    for name, is_dir in entries:
        path = folder / name
        if name.startswith(".") or is_dir or path.suffix.lower() in IGNORED_SUFFIXES:
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise CharfwError(f"unsupported file type {path.suffix!r} (use PNG, JPEG or WebP)", file=path)
        view = parse_view_code(path.stem)
        if view is None:
            raise CharfwError(
                "file name is not a view code: expected f|b, pitch 0-2, yaw 0-7, optional suffix "
                "of letters, digits, - or _ (e.g. f00.png, f01-alt.png)", file=path)
        if kind and view.set != kind:
            what = "face" if kind == "f" else "body"
            raise CharfwError(f"a {what} set holds only '{kind}' view codes, not {view.code!r}", file=path)
        if path.stem in sources:
            raise CharfwError(f"duplicate view code {path.stem!r}: also {sources[path.stem].path.name}", file=path)
        sources[path.stem] = Source(path, view)
    if not sources:
        raise EmptySet(f"image folder is empty: {folder}", file=manifest, line=line, field=field_name)
    return list(sources.values())


class EmptySet(CharfwError):
    """A set folder without images: its character is skipped (with a warning), not an error."""


def _check_finishing(project: Project) -> None:
    """Parse every target's block weights once, and check its block-wise training options against the family:
    unknown presets and wrong-length lists fail now."""

    for name, values in project.config.presets.items():
        try:
            parse_weights(values, project.family)
        except CharfwError as exc:
            raise CharfwError(exc.message, file=project.root / WORKSPACE_FILE, field=f"presets.{name}") from None
    for target in project.trained_targets():
        try:
            network_spec(target.train, project.family)   # block-wise options against the family's blocks
        except BlockError as exc:
            raise CharfwError(str(exc), file=target.manifest, field=f"train.{exc.field}") from None
    for target in project.targets.values():
        try:
            target.block_weights = parse_weights(target.merge.weights, project.family, project.config.presets)
        except CharfwError as exc:
            file, line, field = target.weights_origin or (target.manifest, None, "merge.weights")
            raise CharfwError(exc.message, file=file, line=line, field=field) from None
