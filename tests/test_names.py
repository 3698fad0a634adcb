"""Manifest values that become file or folder names are refused unless they are one harmless path
component; and no stage writes outside build/ and dist/ whatever the schema let through."""

import os
import re
from pathlib import Path

import pytest
import yaml
from wsutil import run_charfw, run_doit

from charfw.errors import CharfwError
from charfw.layout import Layout
from charfw.rules.names import MAX_NAME_BYTES, name_problem, relative_dir_problem, tag_problem, words_problem
from charfw.workspace import load_project

HOSTILE = {
    "traversal": "../../../../../../../../../tmp/x/ESCAPED",
    "parent": "..",
    "dot": ".",
    "hidden": ".git",
    "absolute": "/etc/passwd",
    "windows separator": "a\\b",
    "windows drive": "C:evil",
    "windows reserved": "CON",
    "windows reserved, lower": "nul",
    "windows reserved, superscript": "COM¹",
    "html": "</script>",
    "nul": "a\x00b",
    "newline": "a\nb",
    "bidi override": "girl\u202eexe.gpj",
    "zero width": "gi\u200brl",
    "division slash look-alike": "a\u2215b",
    "fullwidth solidus": "a\uff0fb",
    "fullwidth full stop": "\uff0e\uff0e",
    "very long": "a" * (MAX_NAME_BYTES + 1),
    "long multibyte": "あ" * (MAX_NAME_BYTES // 3 + 1),
    "comma": "a, b",
    "empty": "",
    "trailing space": "girl ",
}
GOOD_NAMES = ["krnk", "krnksf_tyankps", "c-3po", "くろねこ", "Ärger2"]
GOOD_WORDS = ["girl", "1girl", "cat girl", "o'neill", "少女"]


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_values_are_never_names_or_words(value):
    assert name_problem(value) and words_problem(value)


@pytest.mark.parametrize("value", GOOD_NAMES)
def test_good_names(value):
    assert name_problem(value) is None


@pytest.mark.parametrize("value", GOOD_WORDS)
def test_good_words(value):
    assert words_problem(value) is None


def test_tags():
    assert tag_problem("red hair") is None and tag_problem("hair ornament (star)") is None
    for bad in ("a, b", "a\nb", "", " a", "a\u202e"):
        assert tag_problem(bad), bad


def test_output_dirs_stay_inside():
    assert relative_dir_problem("build") is None and relative_dir_problem("out/build") is None
    for bad in ("/tmp/build", "../build", "a/../../b", "C:\\build", "~/build", ".", "", "a\\..\\..\\b"):
        assert relative_dir_problem(bad), bad


# -- through the schema: one line naming the file, the line and the field ----------------------

def _set(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


def _class(v):
    return lambda d: d.update({"class": v})


def _tags(v):
    return lambda d: d.update({"tags": [v]})


def _keyword(v):
    return lambda d: d.update({"keyword": v})


def _outfit(v):
    return lambda d: d.update({"outfits": {v: d["outfits"]["sf"] | {"folder": "sf"}}})


FIELDS = {  # field -> (file, edit, field name in the message)
    "class": ("characters/krnk/character.yaml", _class, "class"),
    "tags": ("characters/krnk/character.yaml", _tags, "tags.0"),
    "keyword": ("characters/krnk/character.yaml", _keyword, "keyword"),
    "outfit name": ("characters/krnk/character.yaml", _outfit, "outfits."),
    "group name": ("characters/groups.yaml", lambda v: lambda d: d.update({v: d.pop("krnksf_tyankps")}), ""),
    "preset name": ("charfw.yaml", lambda v: lambda d: d.update({"presets": {v: [1.0] * 26}}), "presets."),
    "build": ("charfw.yaml", lambda v: lambda d: d.update({"build": v}), "build"),
    "dist": ("charfw.yaml", lambda v: lambda d: d.update({"dist": v}), "dist"),
}
NAME_HOSTILE = {k: v for k, v in HOSTILE.items() if k not in ("comma", "trailing space")}
DIR_HOSTILE = ["traversal", "parent", "dot", "absolute", "windows drive", "nul", "empty", "bidi override"]


def _cases():
    for field, (_, _, _) in FIELDS.items():
        keys = DIR_HOSTILE if field in ("build", "dist") else \
            ["comma", "newline", "nul", "bidi override", "empty", "trailing space"] if field == "tags" else NAME_HOSTILE
        for key in keys:
            yield pytest.param(field, HOSTILE[key], id=f"{field}-{key}")


@pytest.mark.parametrize("field,value", list(_cases()))
def test_each_name_field_refuses_hostile_values(workspace, field, value):
    file, edit, name = FIELDS[field]
    _set(workspace / file, edit(value))
    with pytest.raises(CharfwError) as exc:
        load_project(workspace)
    msg = str(exc.value)
    assert "\n" not in msg.replace(repr(value), "")  # one line (the value itself is shown as repr)
    assert msg.startswith(str(workspace / file) + ":"), msg
    assert re.search(r":\d+: ", msg), msg           # the line
    if name:
        assert f": {name}" in msg, msg


def test_character_folder_name_is_checked(workspace):
    os.rename(workspace / "characters/krnk", workspace / "characters/con")
    with pytest.raises(CharfwError, match="folder name 'con'.*reserved"):
        load_project(workspace)


def test_image_folders_may_be_shared_outside(workspace):
    """Reading is not writing: a set folder elsewhere (the SDXL example's) is allowed."""
    shared = workspace.parent / "shared-face"
    os.rename(workspace / "characters/krnk/face", shared)
    _set(workspace / "characters/krnk/character.yaml", lambda d: d.update({"face": {"folder": str(shared)}}))
    assert load_project(workspace).sets["krnk/face"].folder == shared


# -- the second line of defence: a task writing outside build/ and dist/ fails -------------------

def test_a_task_that_would_write_outside_fails_with_one_line(workspace):
    from charfw.pipeline import actions
    from charfw.pipeline.tasks import task_names

    project = load_project(workspace)
    project.sets["krnk/face"].class_tokens = "../../../../escaped"   # as if the schema had let it through
    layout = Layout(project)
    assert layout.outside([layout.image_rel("krnk/face", layout.plans["krnk/face"][0])]) is not None
    tasks = {t["name"]: t for t in task_names(layout)["task_images"]()}
    bad = tasks["krnk/face"]
    assert bad["targets"] == [] and bad["file_dep"] == []
    func, args = bad["actions"][0]
    assert func is actions.refused
    failure = func(*args)
    assert "refusing to write outside" in failure.message and "escaped" in failure.message
    assert "\n" not in failure.message
    ok = tasks["krnk/sf"]
    assert ok["actions"][0][0] is actions.images and ok["targets"]


def test_layout_outside():
    class P:
        root = Path("/ws")
        build_dir = Path("/ws/build")
        dist_dir = Path("/ws/dist")
        sets: dict = {}
    layout = Layout(P(), plans={})
    assert layout.outside(["build/images/a/b.png", "dist/x.safetensors", "build/report/index.html"]) is None
    for bad in ("../x", "build/../../x", "/etc/passwd", "buildx/a", "dist", "build\\..\\..\\x", "characters/a"):
        assert layout.outside([bad]) == bad


@pytest.mark.slow
@pytest.mark.parametrize("field,value,named", [
    ("class", HOSTILE["traversal"], "class:"),
    ("class", "</script>", "class:"),
    ("keyword", "../../escaped", "keyword:"),
    ("outfit name", "../../../escaped", "outfits."),
    ("group name", "..\\..\\escaped", "groups.yaml:"),
    ("build", "../../escaped", "build:"),
    ("dist", "/tmp/escaped-dist", "dist:"),
])
def test_hostile_values_write_nothing_anywhere(tmp_path, field, value, named):
    """The issue's attacks end to end: doit and charfw check refuse each in one line naming the field;
    no file appears anywhere under the temporary root, outside build/ or inside it."""
    from wsutil import copy_example

    (tmp_path / "a" / "b").mkdir(parents=True)
    ws = copy_example(tmp_path / "a" / "b")
    file, edit, _ = FIELDS[field]
    _set(ws / file, edit(value))
    before = {p for p in tmp_path.rglob("*")}
    for proc in (run_doit(ws, check=False), run_charfw(ws, "check")):
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and named in errors[0], proc.stderr
    created = {p for p in tmp_path.rglob("*")} - before
    assert not [p for p in created if not p.is_relative_to(ws / "build")], created
    assert not [p for p in created if p.is_file() and p.suffix in (".png", ".txt")]
    assert not value.startswith("/") or not Path(value).exists()
