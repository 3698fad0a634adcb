"""The report's HTML: an overview, one page per character and one per target. Static, relative
links only, no JavaScript, readable offline. Every grid cell carries `data-code` and `data-state`
so tools (and tests) can read the grid without looking at pixels.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from charfw.layout import Layout
from charfw.lora.blocks import format_weights
from charfw.project import Target
from charfw.report.grid import view_grid
from charfw.report.numbers import image_rows, target_numbers
from charfw.request import progress_steps

CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}
table.grid td{width:70px;text-align:center}td.present{background:#eef}td.mirrored{background:#def;color:#26c}
td.missing{background:#fdd;color:#c33}.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em}
img{max-width:100%}nav a{margin-right:1em}.row{display:flex;flex-wrap:wrap;align-items:flex-start;gap:8px}
figure{margin:0;width:220px;font-size:11px}figure img{width:100%;image-rendering:pixelated}
img.picked{outline:4px solid #2a2;outline-offset:-4px}table.candidates td{vertical-align:top;font-size:11px}"""

LORA_FILES = ("trained", "merged", "dist")


def character_of(set_id: str) -> str:
    return set_id.split("/", 1)[0]


def characters(layout: Layout) -> dict[str, list[str]]:
    """character name -> its set ids, in manifest order."""
    out: dict[str, list[str]] = {}
    for sid in layout.project.sets:
        out.setdefault(character_of(sid), []).append(sid)
    return out


def sheet_rel(set_id: str) -> str:
    return f"img/sheets/{set_id}.png"


def chart_rels(target: str) -> dict[str, str]:
    """The target page's charts (written by the charts task after training; placeholders before)."""
    rels = {"loss": f"img/curves/{target}-loss.png", "lr": f"img/curves/{target}-lr.png"}
    rels.update({f"blocks-{which}": f"img/blocks/{target}-{which}.png" for which in LORA_FILES})
    return rels


def sample_rels(target: Target, prompts: list[str]) -> dict[str, str]:
    """The target page's renders (the sample stage; placeholders before): one per prompt and seed, the grid."""
    if not target.sample.enabled:
        return {}
    n = len(prompts) * len(target.sample.seeds)
    rels = {f"sample-{i}": f"img/samples/{target.name}-{i}.png" for i in range(n)}
    rels["grid"] = f"img/grids/{target.name}.png"
    return rels


def _page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<nav><a href=\"{up}index.html\">overview</a></nav>\n"
            f"<h1>{escape(title)}</h1>\n{body}\n</body></html>\n")


def _warnings(items: list[str]) -> str:
    if not items:
        return ""
    return "<div class=\"warn\"><b>Problems</b><ul>" + "".join(f"<li>{escape(w)}</li>" for w in items) + \
        "</ul></div>\n"


def index_page(layout: Layout, warnings: list[str]) -> str:
    chars = characters(layout)
    rows = []
    for name, sids in chars.items():
        first = sids[0]
        rows.append(f"<tr><td><a href=\"characters/{escape(name)}.html\">{escape(name)}</a></td>"
                    f"<td>{', '.join(escape(s) for s in sids)}</td>"
                    f"<td><a href=\"characters/{escape(name)}.html\"><img src=\"{sheet_rel(first)}\" width=\"420\" "
                    f"alt=\"{escape(first)}\"></a></td></tr>")
    targets = []
    for t in layout.project.targets.values():
        n = target_numbers(layout, t)
        targets.append(f"<tr data-target=\"{escape(t.name)}\"><td><a href=\"targets/{escape(t.name)}.html\">"
                       f"{escape(t.name)}</a></td><td>{t.kind}</td><td>{n.samples}</td><td>{n.batches_per_epoch}</td>"
                       f"<td>{n.epochs}</td><td>{n.steps}</td><td>{'declared' if t.lora else t.train.trainer}</td></tr>")
    body = (_warnings(warnings)
            + f"<p>Model: {escape(layout.project.config.model)} ({layout.project.family.name})</p>\n"
            + "<h2>Characters</h2>\n<table><tr><th>character</th><th>sets</th><th>contact sheet</th></tr>"
            + "".join(rows) + "</table>\n<h2>Targets</h2>\n<table><tr><th>target</th><th>kind</th>"
            "<th>images x repeats</th><th>batches / epoch</th><th>epochs</th><th>steps</th><th>trainer</th></tr>"
            + "".join(targets) + "</table>")
    if layout.project.generations:
        sids = layout.project.generations
        links = "".join(f"<li><a href=\"{escape(candidates_rel(sid))}\">{escape(sid)}</a></li>" for sid in sids)
        body += f"\n<h2>Candidates</h2>\n<ul>{links}</ul>"
    return _page(f"charfw report: {layout.root.name}", body, 0)


def candidates_rel(set_id: str) -> str:
    return f"candidates/{set_id}.html"


def candidates_page(layout: Layout, gen, picked: dict[str, int | None]) -> str:
    """A generated set's candidates laid out as its view-code grid (pitch rows, yaw columns): per view the
    control images its ControlNets were given and every candidate, the one picked into the set framed."""
    from charfw.generate import views as gv

    here = layout.report_dir / Path(candidates_rel(gen.set_id)).parent
    folder = gv.candidate_dir(layout.build_dir, gen)
    made = {v.code: v for v in gv.views(gen)}

    def img(path: Path, alt: str, cls: str = "") -> str:
        return (f"<img src=\"{escape(os.path.relpath(path, here))}\" alt=\"{escape(alt)}\" width=\"96\""
                + (f" class=\"{cls}\"" if cls else "") + ">")

    rows = []
    for kind, pitch in ((k, p) for k in gen.kind for p in range(3)):
        cells = []
        for yaw in range(8):
            code = f"{kind}{pitch}{yaw}"
            view = made.get(code)
            if view is None:
                cells.append(f"<td data-code=\"{code}\">{code}</td>")
                continue
            controls = "".join(img(folder / gv.control_name(view, i), f"{code} control {i}")
                               for i in range(len(gen.settings.controlnets)))
            cands = "".join(img(folder / gv.candidate_name(view, n), f"{code} candidate {n}",
                                "picked" if picked.get(code) == n else "")
                            for n in range(gen.settings.candidates))
            state = "picked" if picked.get(code) is not None else "open"
            cells.append(f"<td data-code=\"{code}\" data-state=\"{state}\"><b>{code}</b><br>{controls}<br>{cands}</td>")
        rows.append(f"<tr><th>{kind} pitch {pitch}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>yaw {y}</th>" for y in range(8))
    body = (f"<p>Prompt: {escape(gen.settings.prompt or '')}; {gen.settings.candidates} candidates per view, "
            f"seeds from {gen.settings.seed}. Pick one with <code>charfw pick {escape(gen.set_id)} CODE N</code> "
            "(N counts from 0, left to right); the framed one is the set's image now.</p>"
            f"<table class=\"grid candidates\"><tr><th></th>{head}</tr>{''.join(rows)}</table>")
    return _page(f"candidates {gen.set_id}", body, 2)


def _grid_table(layout: Layout, set_id: str) -> str:
    rows = []
    for row in view_grid(layout.project.sets[set_id]):
        cells = "".join(
            f"<td class=\"{c.state}\" data-code=\"{c.code}\" data-state=\"{c.state}\" title=\"{escape(c.label)}\">"
            f"{c.code}{' flip' if c.state == 'mirrored' else ''}{' missing' if c.state == 'missing' else ''}</td>"
            for c in row)
        rows.append(f"<tr><th>pitch {row[0].pitch}</th>{cells}</tr>")
    head = "".join(f"<th>yaw {y}</th>" for y in range(8))
    return f"<table class=\"grid\" data-set=\"{escape(set_id)}\"><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def character_page(layout: Layout, name: str, warnings: list[str]) -> str:
    parts = [_warnings([w for w in warnings if f"/{name}/" in w or w.startswith(name + " ")])]
    for sid in characters(layout)[name]:
        s = layout.project.sets[sid]
        parts.append(f"<h2 id=\"{escape(sid)}\">{escape(sid)} ({'symmetric' if s.symmetric else 'asymmetric'}, "
                     f"sizes {', '.join(map(str, s.sizes))})</h2>")
        parts.append(f"<img src=\"../{sheet_rel(sid)}\" alt=\"contact sheet {escape(sid)}\">")
        parts.append(_grid_table(layout, sid))
        lines = []
        for r in image_rows(layout, sid):
            copies = "<br>".join(f"{escape(f)}: {w}x{h} -> bucket {b[0]}x{b[1]}" for f, (w, h), b in r.prepared) \
                or "none (smaller than every size)"
            lines.append(f"<tr data-image=\"{escape(r.name)}\"><td>{escape(r.name)}</td><td>{r.code}</td>"
                         f"<td>{escape(r.caption)}</td><td>{copies}</td></tr>")
        parts.append("<table><tr><th>image</th><th>code</th><th>caption</th><th>size folders and buckets</th></tr>"
                     + "".join(lines) + "</table>")
    targets = [t for t in layout.project.targets.values()
               if any(character_of(sub.set.id) == name for sub in t.subsets)]
    parts.append("<h2>Targets</h2><ul>" + "".join(
        f"<li><a href=\"../targets/{escape(t.name)}.html\">{escape(t.name)}</a> ({t.kind})</li>" for t in targets)
        + "</ul>")
    return _page(f"character {name}", "\n".join(parts), 1)


def target_page(layout: Layout, target: Target, prompts: list[str]) -> str:
    n = target_numbers(layout, target)
    sets = "".join(f"<li><a href=\"../characters/{escape(character_of(sub.set.id))}.html#{escape(sub.set.id)}\">"
                   f"{escape(sub.set.id)}</a> x {sub.repeats} repeats</li>" for sub in target.subsets)
    classes = "".join(
        f"<tr><td>{c.pair}</td><td>{c.resolution[0]}x{c.resolution[1]}</td><td>{c.batch}</td>"
        f"<td>{'<br>'.join(_folder_text(f) for f in c.folders)}</td>"
        f"<td>{c.samples}</td><td>{c.batches}</td></tr>" for c in n.classes)
    charts = chart_rels(target.name)
    blocks = "<div class=\"row\">" + "".join(
        f"<img src=\"../{charts['blocks-' + which]}\" alt=\"{which} blocks\" style=\"max-width:380px\">"
        for which in LORA_FILES) + "</div>"
    body = (f"<p>{target.kind} target; trigger words: {escape(', '.join(target.trigger_words))}; "
            f"block weights: {escape(format_weights(target.block_weights, layout.project.family))}</p>"
            f"<h2>Data</h2><ul>{sets}</ul>"
            "<table><tr><th>size class</th><th>resolution</th><th>batch</th><th>folders (images x repeats)</th>"
            f"<th>samples / epoch</th><th>batches / epoch</th></tr>{classes}</table>"
            f"<p data-numbers=\"1\">{n.samples} samples per epoch, {n.batches_per_epoch} batches per epoch, "
            f"{n.steps} steps = {n.epochs} epochs{_scale_note(n)}</p>"
            + _regularization_section(layout, target) +
            f"<h2>Training</h2><img src=\"../{charts['loss']}\" alt=\"loss\"><img src=\"../{charts['lr']}\" alt=\"lr\">"
            f"<h2>Blocks (trained, merged, finished)</h2>{blocks}" + _progress_section(target)
            + _samples_section(target, prompts))
    return _page(f"target {target.name}", body, 1)


def _folder_text(f) -> str:
    text = f"{escape(f.set_id)}/{escape(f.name)}: {f.images} x {f.repeats}"
    return text if f.filled is None else f"{text} (regularization, filled to {f.samples})"


def _regularization_section(layout: Layout, target: Target) -> str:
    """Which regularization images pair with which of the target's views (docs/rules.md §4a)."""
    if not target.reg_subsets:
        return ""
    here = layout.report_dir / "targets"
    own: dict[str, list[str]] = {}
    for sub in target.subsets:
        for src in sub.set.sources:
            own.setdefault(src.view.code, []).append(f"{character_of(sub.set.id)}/{src.path.name}")
    rows = []
    for code in sorted(own):
        thumbs = []
        for sub in target.reg_subsets:
            if sub.set.sources[0].view.code != code:
                continue
            largest = {}
            for item in layout.plans[sub.set.id]:
                largest[item.source.path] = item   # plans go size by size: the last is the largest
            thumbs += [f"<img src=\"{escape(os.path.relpath(layout.root / layout.image_rel(sub.set.id, item), here))}\" "
                       f"alt=\"{escape(sub.set.id)}/{escape(item.name)}\" title=\"{escape(str(item.source.path))}\" "
                       "height=\"64\">" for item in largest.values()]
        rows.append(f"<tr data-code=\"{code}\"><td>{code}</td><td>{escape(', '.join(own[code]))}</td>"
                    f"<td>{''.join(thumbs) or 'none'}</td></tr>")
    weight = target.train.prior_loss_weight
    return (f"<h2>Regularization</h2><p>images of the target's own view codes, captioned with the class tokens only; "
            f"loss weight {weight:g} (prior_loss_weight)</p><table class=\"reg\"><tr><th>view</th><th>target images"
            "</th><th>regularization images</th></tr>" + "".join(rows) + "</table>")


def _scale_note(n) -> str:
    if n.batch_scale == "auto":
        return ("; batch_scale auto: on a GPU with room to spare the batches grow up to 8x and the steps shrink to "
                "keep these epochs (the LoRA's charfw_batch_scale says what was chosen)")
    return f" (batch_scale {n.batch_scale}: the profile's batches x{n.batch_scale})" if n.batch_scale != 1 else ""


def progress_rels(target: Target) -> dict[int, str]:
    """step -> the image the trainer renders then (train.sample_every_n_steps)."""
    return {n: f"img/progress/{target.name}/step-{n:06d}.png"
            for n in progress_steps(target.train.sample_every_n_steps, target.steps)}


def _progress_section(target: Target) -> str:
    rels = progress_rels(target)
    if not rels:
        return ""
    cells = "".join(f"<figure data-step=\"{n}\"><img src=\"../{rel}\" alt=\"step {n}\" width=\"160\">"
                    f"<figcaption>step {n}</figcaption></figure>" for n, rel in rels.items())
    return f"<h2>During training</h2><div class=\"row\">{cells}</div>"


def _samples_section(target: Target, prompts: list[str]) -> str:
    rels = sample_rels(target, prompts)
    if not rels:
        return ""
    s = target.sample
    figures, i = [], 0
    for prompt in prompts:
        for seed in s.seeds:
            figures.append(f"<figure data-sample=\"{i}\"><img src=\"../{rels[f'sample-{i}']}\" alt=\"sample {i}\">"
                           f"<figcaption>seed {seed}: {escape(prompt)}</figcaption></figure>")
            i += 1
    return (f"<h2>Samples</h2><p>{s.sampler}, {s.steps} steps, guidance {s.guidance:g}, LoRA strength 1; "
            f"negative: {escape(s.negative_prompt)}</p><div class=\"row\">" + "".join(figures) + "</div>"
            + f"<h2>X/Y grid</h2><p>block weights ({escape(', '.join(s.grid_weights))}) x strength "
            f"({', '.join(f'{v:g}' for v in s.grid_strengths)}), first prompt, seed {s.seeds[0]}</p>"
            f"<img src=\"../{rels['grid']}\" alt=\"x/y grid\">")


def report_dir(layout: Layout) -> Path:
    return layout.report_dir
