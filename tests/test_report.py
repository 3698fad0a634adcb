"""The character report: pages that parse and link only to files that exist, view-code grids
readable through the HTML, problems shown, numbers equal to the trainer's, incremental rebuilds."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from wsutil import executed, run_charfw, run_doit

from charfw.layout import Layout
from charfw.report.grid import view_grid
from charfw.report.numbers import target_numbers
from charfw.workspace import load_project


class Page(HTMLParser):
    """Links, images and grid cells of one page."""

    def __init__(self, text: str):
        super().__init__()
        self.refs: list[str] = []
        self.cells: dict[tuple[str, str], str] = {}     # (set, code) -> state
        self.grid_set = None
        self.stack: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("br", "img", "meta"):
            self.stack.append(tag)
        if tag == "a" and "href" in a:
            self.refs.append(a["href"])
        if tag == "img":
            self.refs.append(a["src"])
        if tag == "table" and "data-set" in a:
            self.grid_set = a["data-set"]
        if tag == "td" and "data-code" in a:
            self.cells[(self.grid_set, a["data-code"])] = a["data-state"]

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def pages(report: Path) -> dict[Path, Page]:
    return {p: Page(p.read_text(encoding="utf-8")) for p in report.rglob("*.html")}


def test_grid_cells_follow_view_codes(workspace):
    project = load_project(workspace)
    krnk = view_grid(project.sets["krnk/face"])                # symmetric: 5-7 come from flipping 3-1
    assert [[c.state for c in row] for row in krnk] == [["present"] * 5 + ["mirrored"] * 3] * 3
    assert krnk[1][6].source.name == "f12.png" and krnk[1][6].code == "f16"
    tyank = view_grid(project.sets["tyank/face"])              # asymmetric: every yaw is its own
    names = {p.name for p in (workspace / "characters/tyank/face").iterdir()}
    for row in tyank:
        for cell in row:
            assert (cell.state == "present") == (f"{cell.code}.png" in names), cell
            assert cell.state != "mirrored"


@pytest.mark.slow
def test_report_pages_parse_link_to_existing_files_and_show_the_grid(workspace):
    proc = run_charfw(workspace, "report")
    assert proc.returncode == 0, proc.stderr
    report = workspace / "build/report"
    assert Path(proc.stdout.strip().splitlines()[-1]) == report / "index.html"
    found = pages(report)
    assert {p.relative_to(report).as_posix() for p in found} == {
        "index.html", "characters/krnk.html", "characters/tyank.html",
        *(f"targets/{t}.html" for t in ("krnk", "krnksf", "tyank", "tyankps", "krnksf_tyankps"))}
    for path, page in found.items():
        for ref in page.refs:
            target = (path.parent / ref.split("#")[0]).resolve()
            assert target.is_file(), (path.name, ref)
            assert report.resolve() in target.parents, ref      # self-contained: nothing outside the report
    krnk = found[report / "characters/krnk.html"]
    project = load_project(workspace)
    for sid in ("krnk/face", "krnk/sf"):
        for row in view_grid(project.sets[sid]):
            for cell in row:
                assert krnk.cells[(sid, cell.code)] == cell.state
    assert krnk.cells[("krnk/face", "f05")] == "mirrored" and krnk.cells[("krnk/face", "f03")] == "present"
    tyank = found[report / "characters/tyank.html"]
    assert tyank.cells[("tyank/face", "f12")] == "missing" and tyank.cells[("tyank/face", "f07")] == "present"


@pytest.mark.slow
def test_problems_are_shown_at_the_top(workspace):
    (workspace / "characters/tyank/face/f04.png").unlink()      # no yaw 4 at any pitch now
    assert run_charfw(workspace, "report").returncode == 0
    index = (workspace / "build/report/index.html").read_text(encoding="utf-8")
    page = (workspace / "build/report/characters/tyank.html").read_text(encoding="utf-8")
    for text in (index, page):
        warn = text[text.index('<div class="warn">'):text.index("</div>")]
        assert "no image for yaw 4" in warn and "characters/tyank/face" in warn
    assert 'data-code="f04" data-state="missing"' in page


def test_mixed_aspect_ratios_are_a_problem_naming_the_odd_images(workspace):
    from PIL import Image

    face = workspace / "characters/krnk/face"
    with Image.open(face / "f02.png") as im:
        w, h = im.size
        im.crop((0, 0, w, h * 2 // 3)).save(face / "f02.png")   # a landscape image among square ones
    assert run_charfw(workspace, "report").returncode == 0
    page = (workspace / "build/report/characters/krnk.html").read_text(encoding="utf-8")
    warn = page[page.index('<div class="warn">'):page.index("</div>")]
    assert "different aspect ratios" in warn and "f02.png" in warn and "f00.png" not in warn
    assert "different aspect ratios" not in (workspace / "build/report/characters/tyank.html").read_text()


@pytest.mark.slow
def test_numbers_equal_what_the_trainer_reads(workspace):
    from charfw.train.dataset import load_datasets
    from charfw.train.sampling import BatchPlan

    assert run_doit(workspace, "dataset").returncode == 0
    layout = Layout(load_project(workspace))
    for name, target in layout.project.targets.items():
        datasets = load_datasets(layout.toml_path(name))
        numbers = target_numbers(layout, target)
        assert numbers.batches_per_epoch == BatchPlan(datasets, 0).per_epoch, name
        assert numbers.samples == sum(d.num_train_images for d in datasets), name
        assert numbers.epochs == -(-target.steps // numbers.batches_per_epoch)
    assert run_doit(workspace, "report").returncode == 0
    krnksf = target_numbers(layout, layout.project.targets["krnksf"])
    page = (layout.build_dir / "report/targets/krnksf.html").read_text(encoding="utf-8")
    assert (f"{krnksf.samples} samples per epoch, {krnksf.batches_per_epoch} batches per epoch, "
            f"{krnksf.steps} steps = {krnksf.epochs} epochs") in page


def test_numbers_at_a_fixed_batch_scale_equal_what_the_trainer_trains(workspace):
    import torch

    from charfw.train.dataset import load_datasets
    from charfw.train.loop import _batch_scale, _grow_batches
    from charfw.train.sampling import BatchPlan

    text = (workspace / "charfw.yaml").read_text()
    (workspace / "charfw.yaml").write_text(text.replace("  steps: 100", "  steps: 100\n  batch_scale: 2"))
    assert run_doit(workspace, "dataset").returncode == 0
    layout = Layout(load_project(workspace))
    footprint = dict(pixels=1, adapter_params=1, weight_bytes=1)
    for name, target in layout.project.targets.items():
        numbers = target_numbers(layout, target)
        req, datasets = layout.train_request(target), load_datasets(layout.toml_path(name))
        scale = _batch_scale(req, datasets, footprint, None, torch.device("cpu"))
        req, grown = _grow_batches(req, datasets, scale)
        assert scale == numbers.batch_scale == 2
        assert [c.batch for c in numbers.classes] == [d.batch_size for d in grown], name
        assert numbers.batches_per_epoch == BatchPlan(grown, 0).per_epoch, name
        assert numbers.steps == req.steps < target.steps, name
    assert run_doit(workspace, "report").returncode == 0
    page = (layout.build_dir / "report/targets/krnk.html").read_text(encoding="utf-8")
    assert "batch_scale 2" in page


@pytest.mark.slow
def test_editing_one_image_rerenders_only_its_sheet_and_a_weight_change_only_its_page(workspace):
    assert run_doit(workspace, "report").returncode == 0
    assert executed(run_doit(workspace, "report")) == set()
    face = workspace / "characters/krnk/face"
    shutil.copy(face / "f01.png", face / "f00.png")             # same size: only the pixels change
    assert executed(run_doit(workspace, "report")) == {"report:sheet-krnk/face"}
    manifest = workspace / "characters/krnk/character.yaml"
    manifest.write_text(manifest.read_text() + "face:\n  merge:\n    weights: ALL\n")
    assert executed(run_doit(workspace, "report")) == {"report:targets/krnk"}
