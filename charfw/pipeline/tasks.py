"""The doit stages, as task dictionaries. Each task declares its files and exactly one
`config_changed` holding every manifest value it reads, so doit reruns a task only when
what it would write changes.

    generate  candidate images per view code   (per view of a set with a `generate:` section)
    images    sources -> RGB PNGs per size     (per set)
    captions  view codes -> .txt per image     (per set)
    dataset   sd-scripts dataset TOML          (per target)
    train     LoRA training                    (per target without a declared `lora:`)
    merge     block weights baked in           (per target)
    compress  SVD resize -> dist/<name>        (per target)
    report    contact sheets and HTML pages    (per set, character, target; needs no training)
    charts    loss/lr curves, block charts     (per target, after compress)
    sample    sample images and X/Y grids      (per target, after training / compress)

Paths come from charfw.layout; what the actions do is in charfw.pipeline.actions.
"""

from __future__ import annotations

from doit.tools import config_changed

from charfw.check import check_warnings
from charfw.dataset.toml import dataset_config, render_toml
from charfw.fingerprint import digest_cache, is_trained
from charfw.layout import Layout
from charfw.lora.blocks import format_weights, parse_weights
from charfw.pipeline import actions
from charfw.report import pages
from charfw.report.grid import view_grid
from charfw.request import TrainRequest
from charfw.rules.captions import caption
from charfw.rules.modelref import is_builtin, resolve_model_ref
from charfw.sample.prompts import sample_prompts

STAGES = ("generate", "images", "captions", "dataset", "train", "merge", "compress", "report", "charts", "sample")


class values_changed(config_changed):
    """doit's config_changed, shown by `doit info` as what it covers instead of every value."""

    def __init__(self, config, what: str):
        super().__init__(config)
        self.what = what

    def __str__(self) -> str:
        return f"manifest values read by this task changed ({self.what})"


class TrainedCheck:
    """doit uptodate: the LoRA exists and was trained from exactly these settings and inputs."""

    def __init__(self, req: TrainRequest, layout: Layout):
        self.req = req
        self.build_dir = layout.build_dir

    def __call__(self, task, values) -> bool:
        return is_trained(self.req, digest_cache(self.build_dir))

    def __str__(self) -> str:
        return "no trained LoRA whose run key matches the current settings and inputs"


def task_generate(layout: Layout):
    """Candidate images per view code, over the pose templates (docs/rules.md §2b; `charfw pick` takes one)."""
    from charfw.fingerprint import model_identity
    from charfw.generate import views as gv
    from charfw.templates.render import TEMPLATE_VERSION

    project, cfg = layout.project, layout.project.config
    model = resolve_model_ref(cfg.model, layout.root)
    vae = resolve_model_ref(cfg.vae, layout.root) if cfg.vae else None
    clip_skip = cfg.train.clip_skip if cfg.train else 2
    identities = {"model": model_identity(model), "vae": model_identity(vae)}
    for set_id, gen in project.generations.items():
        s = gen.settings
        if not s.controlnets:
            continue
        nets = [resolve_model_ref(u.model, gen.manifest.parent) for u in s.controlnets]
        folder = gv.candidate_dir(layout.build_dir, gen)
        for view in gv.views(gen):
            prompt = gv.prompt(gen, view, cfg.captions.rules)
            own = gv.user_template(gen, view)
            paths = [folder / gv.candidate_name(view, n) for n in range(s.candidates)]
            controls = [folder / gv.control_name(view, i) for i in range(len(s.controlnets))]
            yield {
                "name": f"{set_id}/{view.code}",
                "doc": f"{s.candidates} candidates of {view.code}: {prompt}",
                "actions": [(actions.generate, [gen, view, prompt, [str(p) for p in paths], model, vae,
                                                project.family, nets, clip_skip])],
                "file_dep": [layout.rel(p) for p in [own, *nets] if p is not None and not is_builtin(str(p))],
                "targets": [layout.rel(p) for p in (*paths, *controls)],
                "uptodate": [values_changed({"prompt": prompt, "settings": s.model_dump(exclude={"templates", "views"}),
                                             "template": str(own) if own else TEMPLATE_VERSION, **identities,
                                             "clip_skip": clip_skip}, "prompt, generate settings, template, model")],
                "clean": True,
            }


def task_images(layout: Layout):
    """Composite transparency onto the background and write every size of every source."""
    for sid, s in layout.project.all_sets.items():
        items = layout.plans[sid]
        yield {
            "name": sid,
            "doc": f"{len(s.sources)} sources x {len(s.sizes)} sizes -> {len(items)} images",
            "actions": [(actions.images, [str(layout.set_dir(sid)), items, s.background, sid in layout.masked_sets])],
            "file_dep": [layout.rel(src.path) for src in s.sources],
            "targets": [layout.image_rel(sid, i) for i in items],
            "uptodate": [values_changed({
                "background": list(s.background),
                "images": [[layout.rel(i.source.path), i.folder, i.width, i.height] for i in items],
                **({"alpha": True} if sid in layout.masked_sets else {}),
            }, "background colour, sizes, folder names, kept transparency")],
            "clean": True,
        }


def task_captions(layout: Layout):
    """Write one caption per prepared image, derived from its view code (docs/rules.md §3)."""
    template = layout.project.config.captions.rules
    for sid, s in layout.project.all_sets.items():
        items = layout.plans[sid]
        by_view = {v: caption(s.keywords, v, template) for v in {i.source.view for i in items}}
        texts = {f"{i.folder}/{i.source.stem}.txt": by_view[i.source.view] for i in items}
        yield {
            "name": sid,
            "doc": f"{len(texts)} captions starting {', '.join(s.keywords)}",
            "actions": [(actions.captions, [str(layout.set_dir(sid)), texts])],
            "targets": [layout.caption_rel(sid, i) for i in items],
            "uptodate": [values_changed(texts, "caption text of each image")],
            "clean": True,
        }


def task_dataset(layout: Layout):
    """Write each target's dataset TOML for sd-scripts' --dataset_config (docs/rules.md §4)."""
    table = layout.project.batch_table
    for name, target in layout.project.targets.items():
        path = layout.toml_path(name)
        masked = layout.masked_sets if target.train.masked_loss else frozenset()
        text = render_toml(dataset_config(target, layout.plans, layout.images_root, path.parent, table,
                                          layout.project.family, masked))
        yield {
            "name": name,
            "doc": f"{target.kind} target {name}: {', '.join(sub.set.id for sub in target.subsets)}",
            "actions": [(actions.text_file, [str(path), text])],
            "file_dep": layout.dataset_files(target),
            "targets": [layout.rel(path)],
            "uptodate": [values_changed(text, "dataset TOML text")],
            "clean": True,
        }


def task_train(layout: Layout):
    """Train each target's LoRA (embedded trainer or kohya sd-scripts, docs/rules.md §6)."""
    targets = layout.project.targets
    for target in layout.project.trained_targets():
        req = layout.train_request(target)
        deps = [f"dataset:{target.name}"]
        if target.init and targets[target.init].lora is None:
            deps.append(f"train:{target.init}")
        s = target.train
        yield {
            "name": target.name,
            "doc": f"{s.trainer}: {s.network} dim {req.recipe.network.dim}, {req.steps} steps"
                   + (f", from {target.init}" if target.init else ""),
            "actions": [(actions.train, [req, str(layout.build_dir)])],
            "task_dep": deps,
            "targets": [layout.rel(req.output)],
            "uptodate": [TrainedCheck(req, layout)],
            "clean": [(actions.clean_training, [req])],
            "verbosity": 2,
        }


def task_merge(layout: Layout):
    """Bake each target's block weights into its trained LoRA (docs/rules.md §8)."""
    for target in layout.project.targets.values():
        src, dst = layout.trained_path(target), layout.merged_path(target)
        yield {
            "name": target.name,
            "doc": f"{target.merge.weights if isinstance(target.merge.weights, str) else 'custom'} weights",
            "actions": [(actions.merge, [str(src), str(dst), target.merge.weights, layout.project.config.presets],
                         {"downstream": (str(layout.dist_path(target)),)})],
            "file_dep": [layout.rel(src)],
            "targets": [layout.rel(dst)],
            "uptodate": [values_changed(format_weights(target.block_weights, layout.project.family), "block weights")],
            "clean": True,
        }


def task_compress(layout: Layout):
    """SVD-compress each merged LoRA into dist/<keyword>.safetensors (docs/rules.md §9)."""
    for target in layout.project.targets.values():
        s = target.compress
        src, dst = layout.merged_path(target), layout.dist_path(target)
        yield {
            "name": target.name,
            "doc": f"{s.method} {s.value:g}" if s.enabled else "copy (compression off)",
            "actions": [(actions.compress, [str(src), str(dst), s])],
            "file_dep": [layout.rel(src)],
            "targets": [layout.rel(dst)],
            "uptodate": [values_changed(s.model_dump(), "compress settings")],
            "clean": True,
        }


def task_report(layout: Layout):
    """Write build/report/: contact sheets and pages per character and target (before training too)."""

    out = pages.report_dir(layout)
    for sid, s in layout.project.sets.items():
        rows = view_grid(s)
        yield {
            "name": f"sheet-{sid}",
            "doc": f"contact sheet of {sid}",
            "actions": [(actions.contact_sheet, [rows, s.background, str(out / pages.sheet_rel(sid))])],
            "file_dep": [layout.rel(src.path) for src in s.sources],
            "targets": [layout.rel(out / pages.sheet_rel(sid))],
            "uptodate": [values_changed({"cells": [[c.code, c.state, c.count, layout.rel(c.source) if c.source
                                                     else None] for row in rows for c in row],
                                         "background": list(s.background)}, "view grid, background")],
            "clean": True,
        }
    warnings = check_warnings(layout)
    texts = {"index.html": pages.index_page(layout, warnings)}
    texts.update({f"characters/{name}.html": pages.character_page(layout, name, warnings)
                  for name in pages.characters(layout)})
    if layout.project.generations:
        from charfw.generate.pick import picked
        from charfw.generate.views import views

        for sid, gen in layout.project.generations.items():
            chosen = {v.code: picked(gen, layout.build_dir, v.code, gen.settings.candidates) for v in views(gen)}
            texts[pages.candidates_rel(sid)] = pages.candidates_page(layout, gen, chosen)
    for rel, text in texts.items():
        yield {
            "name": rel.removesuffix(".html"),
            "doc": f"report page {rel}",
            "actions": [(actions.report_page, [str(out / rel), text])],
            "targets": [layout.rel(out / rel)],
            "uptodate": [values_changed(text, "page text")],
            "clean": True,
        }
    template = layout.project.config.captions.rules
    for target in layout.project.targets.values():
        rel = f"targets/{target.name}.html"
        prompts = sample_prompts(target, target.sample, template)
        text = pages.target_page(layout, target, prompts)
        charts = tuple(str(out / c) for c in (*pages.chart_rels(target.name).values(),
                                              *pages.sample_rels(target, prompts).values(),
                                              *pages.progress_rels(target).values()))
        yield {
            "name": rel.removesuffix(".html"),
            "doc": f"report page {rel}",
            "actions": [(actions.report_page, [str(out / rel), text, charts])],
            "targets": [layout.rel(out / rel)],
            "uptodate": [values_changed(text, "page text")],
            "clean": True,
        }


def task_charts(layout: Layout):
    """Draw each finished target's loss and learning-rate curves and per-block charts into the report."""

    out = pages.report_dir(layout)
    for target in layout.project.targets.values():
        loras = {"trained": layout.trained_path(target), "merged": layout.merged_path(target),
                 "dist": layout.dist_path(target)}
        charts = {k: str(out / v) for k, v in pages.chart_rels(target.name).items()}
        yield {
            "name": target.name,
            "doc": f"loss/lr curves and block charts of {target.name}",
            "actions": [(actions.training_charts, [target.name, str(layout.log_dir / target.name),
                                                   {k: str(v) for k, v in loras.items()}, charts])],
            "file_dep": [layout.rel(p) for p in loras.values()],
            "task_dep": [f"report:targets/{target.name}"],
            "targets": [layout.rel(p) for p in charts.values()],
            "clean": True,
        }


def task_sample(layout: Layout):
    """Render sample images of each finished LoRA and its X/Y grid (block weights x strength) for the report."""

    out, project = pages.report_dir(layout), layout.project
    model = resolve_model_ref(project.config.model, layout.root)
    vae = resolve_model_ref(project.config.vae, layout.root) if project.config.vae else None
    template = project.config.captions.rules
    for target in project.targets.values():
        s = target.sample
        if not s.enabled:
            continue
        prompts = sample_prompts(target, s, template)
        rels = pages.sample_rels(target, prompts)
        outs = [str(out / rels[f"sample-{i}"]) for i in range(len(prompts) * len(s.seeds))]
        render = s.model_dump(exclude={"grid_weights", "grid_strengths"})
        common = {"model": project.config.model, "vae": project.config.vae, "clip_skip": target.train.clip_skip}
        args = [model, vae, project.family]
        yield {
            "name": target.name,
            "doc": f"{len(outs)} samples of {target.name}",
            "actions": [(actions.samples, [*args, str(layout.dist_path(target)), prompts, s,
                                           target.train.clip_skip, outs], {"cluster": layout.cluster})],
            "file_dep": [layout.rel(layout.dist_path(target))],
            "task_dep": [f"report:targets/{target.name}"],
            "targets": [layout.rel(p) for p in outs],
            "uptodate": [values_changed({**common, "render": render, "prompts": prompts}, "sample settings")],
            "clean": True,
        }
        rows = {}
        for name in s.grid_weights:
            rows[name] = dict(target.block_weights) if name == "target" else parse_weights(
                name, project.family, project.config.presets)
        grid = str(out / rels["grid"])
        yield {
            "name": f"grid-{target.name}",
            "doc": f"X/Y grid of {target.name}: {', '.join(s.grid_weights)} x strength",
            "actions": [(actions.xy_grid, [*args, str(layout.trained_path(target)), prompts[0], s,
                                           target.train.clip_skip, rows, grid], {"cluster": layout.cluster})],
            "file_dep": [layout.rel(layout.trained_path(target))],
            "task_dep": [f"report:targets/{target.name}"],
            "targets": [layout.rel(grid)],
            "uptodate": [values_changed({**common, "render": render, "prompt": prompts[0], "rows": rows,
                                         "strengths": s.grid_strengths}, "grid settings, block weights")],
            "clean": True,
        }


def task_blocked(layout: Layout):
    """Characters left out until their images are there (not run by default; running one says why)."""
    for name, skipped in layout.project.skipped.items():
        yield {"name": name, "doc": f"waiting for images: {skipped.reason}",
               "actions": [(actions.blocked, [skipped.reason])], "uptodate": [False]}


TASKS = {"generate": task_generate, "images": task_images, "captions": task_captions, "dataset": task_dataset, "train": task_train,
         "merge": task_merge, "compress": task_compress, "report": task_report, "charts": task_charts,
         "sample": task_sample,
         "blocked": task_blocked}


def task_names(layout: Layout) -> dict:
    """The names a dodo.py exposes to doit: its config and one task_<stage> per stage."""
    names: dict = {
        "DOIT_CONFIG": {
            "dep_file": str(layout.build_dir / ".doit.db"),
            "default_tasks": list(STAGES),
            "verbosity": 1,
            "sort": "definition",  # `doit list` in pipeline order
        },
    }
    for stage in TASKS:
        names[f"task_{stage}"] = _bound(TASKS[stage], layout)
    return names


def _confined(tasks, layout: Layout):
    """Each task as it is, unless it would write outside build/ or dist/: then it fails, naming the path."""
    for task in tasks:
        bad = layout.outside(task.get("targets", ()))
        if bad is not None:
            task = {**task, "actions": [(actions.refused, [bad])], "uptodate": [False], "file_dep": [],
                    "targets": [], "clean": []}
        yield task


def _bound(func, layout: Layout):
    """A task generator doit can call with no arguments, keeping the stage's docstring for `doit list`."""
    def generate():
        return _confined(func(layout), layout)
    generate.__doc__ = func.__doc__
    generate.__name__ = func.__name__
    # doit orders stages by the line their generator is defined on: the stage function's own
    # line, so `doit list` shows the pipeline order of this file, not the alphabet
    generate.__code__ = generate.__code__.replace(co_firstlineno=func.__code__.co_firstlineno)
    return generate
