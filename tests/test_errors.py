"""Each bad input gives one clear error naming the file and field or image, and leaves no partial output."""

import shutil

import pytest
from wsutil import run_charfw, run_doit, use_spec_sizes

from charfw.check import check_project
from charfw.errors import CharfwError
from charfw.families import SDXL
from charfw.workspace import load_project


def error_of(ws) -> str:
    with pytest.raises(CharfwError) as exc:
        check_project(ws)
    return str(exc.value)


def append(path, text):
    path.write_text(path.read_text() + text)


def test_example_is_valid(workspace):
    project, warnings = check_project(workspace)
    assert set(project.targets) == {"krnk", "krnksf", "tyank", "tyankps", "krnksf_tyankps"}
    assert warnings == []


def test_file_not_matching_view_code(workspace):
    shutil.copy(workspace / "characters/krnk/face/f00.png", workspace / "characters/krnk/face/front.png")
    msg = error_of(workspace)
    assert "characters/krnk/face/front.png" in msg and "view code" in msg


def test_body_code_in_face_folder(workspace):
    shutil.copy(workspace / "characters/krnk/face/f00.png", workspace / "characters/krnk/face/b00.png")
    assert "face/b00.png" in error_of(workspace)


def test_duplicate_view_code(workspace):
    from PIL import Image
    Image.open(workspace / "characters/krnk/face/f00.png").convert("RGB").save(workspace / "characters/krnk/face/f00.jpg")
    msg = error_of(workspace)
    assert "duplicate view code 'f00'" in msg and "characters/krnk/face/f00" in msg


def test_missing_folder(workspace):
    shutil.rmtree(workspace / "characters/tyank/ps")
    msg = error_of(workspace)
    assert "characters/tyank/character.yaml" in msg and "outfits.ps.folder" in msg and "not found" in msg


def test_empty_folder_leaves_the_character_out_with_a_warning(workspace):
    for p in (workspace / "characters/krnk/face").iterdir():
        p.unlink()
    project, warnings = check_project(workspace)
    assert set(project.targets) == {"tyank", "tyankps"}            # krnk and the group needing it wait
    [char, group] = warnings
    assert "characters/krnk/character.yaml" in char and "face.folder" in char and "empty" in char
    assert group.startswith("krnksf_tyankps is left out") and "member krnksf belongs to krnk" in group


def test_a_new_character_does_not_block_the_others(workspace):
    assert run_charfw(workspace, "new", "newbie", "--outfit", "sc").returncode == 0
    listing = run_doit(workspace, "list", "--all")
    assert listing.returncode == 0 and "left out until it has images" in listing.stderr
    assert "blocked:newbie" in listing.stdout and "dataset:krnk" in listing.stdout
    stages = [line.split()[0] for line in run_doit(workspace, "list").stdout.splitlines()]
    assert stages == ["generate", "images", "captions", "dataset", "train", "merge", "compress", "report", "charts", "sample",
                      "blocked"]
    assert run_doit(workspace, "dataset:tyank").returncode == 0
    plan = run_charfw(workspace, "plan")
    assert plan.returncode == 0 and "dataset:krnk" in plan.stdout and "blocked:" not in plan.stdout, plan.stderr
    blocked = run_doit(workspace, "blocked:newbie", check=False)
    assert blocked.returncode != 0 and "characters/newbie/face" in blocked.stdout + blocked.stderr


def test_corrupt_image(workspace):
    (workspace / "characters/krnk/face/f02.png").write_bytes(b"not an image at all")
    msg = error_of(workspace)
    assert "characters/krnk/face/f02.png" in msg and "cannot read image" in msg


def test_truncated_image_fails_its_task_and_leaves_no_partial_output(workspace):
    path = workspace / "characters/krnk/face/f02.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    assert "f02.png" in error_of(workspace)
    proc = run_doit(workspace, "images", check=False)
    assert proc.returncode != 0
    assert "characters/krnk/face/f02.png" in proc.stdout + proc.stderr
    out = workspace / "build/images/krnk/face"
    assert not list(out.rglob("f02.png"))
    assert not list((workspace / "build").rglob("*.tmp*"))


def test_mixed_size_classes_in_one_folder(workspace):
    from PIL import Image
    use_spec_sizes(workspace)  # at 512 and up a 768x300 image is MID_LOW, the others MID_MID
    Image.new("RGBA", (768, 300)).save(workspace / "characters/krnk/face/f03.png")
    msg = error_of(workspace)
    assert "characters/krnk/face/f03.png" in msg and "size class" in msg
    (workspace / "characters/krnk/face/f00.png").unlink()     # the odd image first in the folder:
    Image.new("RGBA", (768, 300)).save(workspace / "characters/krnk/face/f00.png")
    (workspace / "characters/krnk/face/f03.png").unlink()
    msg = error_of(workspace)                                 # still named, not the first good one
    assert "characters/krnk/face/f00.png" in msg and "of the set's" in msg


def test_unknown_field_with_line(workspace):
    append(workspace / "characters/krnk/character.yaml", "colour: red\n")
    msg = error_of(workspace)
    lines = (workspace / "characters/krnk/character.yaml").read_text().splitlines()
    assert f"characters/krnk/character.yaml:{len(lines)}: colour: unknown field" in msg


def test_wrong_type_with_line(workspace):
    path = workspace / "characters/tyank/character.yaml"
    path.write_text(path.read_text().replace("symmetric: false", "symmetric: sometimes"))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.startswith("symmetric"))
    msg = error_of(workspace)
    assert f"character.yaml:{line}: symmetric:" in msg and "sometimes" in msg


def test_nested_field_error_points_at_its_line(workspace):
    path = workspace / "characters/krnk/character.yaml"
    append(path, "train:\n  steps: many\n")
    line = len(path.read_text().splitlines())
    assert f"character.yaml:{line}: train.steps:" in error_of(workspace)


def test_unknown_group_member(workspace):
    path = workspace / "characters/groups.yaml"
    path.write_text(path.read_text().replace("tyankps]", "nobody]"))
    msg = error_of(workspace)
    assert "groups.yaml:" in msg and "unknown group member 'nobody'" in msg and "krnksf" in msg


def test_weight_list_of_wrong_length(workspace):
    path = workspace / "characters/krnk/character.yaml"
    append(path, "merge:\n  weights: [1, 0, 1]\n")
    msg = error_of(workspace)
    assert f"characters/krnk/character.yaml:{len(path.read_text().splitlines())}: merge.weights:" in msg
    assert "3" in msg


def test_unknown_preset(workspace):
    path = workspace / "characters/groups.yaml"
    append(path, "  merge:\n    weights: FACEE\n")
    msg = error_of(workspace)
    line = len(path.read_text().splitlines())
    assert f"groups.yaml:{line}: krnksf_tyankps.merge.weights:" in msg and "FACEE" in msg


def test_workspace_preset_is_accepted(workspace):
    append(workspace / "charfw.yaml", "presets:\n  MINE: [" + ", ".join(["1"] * 26) + "]\n")
    append(workspace / "characters/groups.yaml", "  merge:\n    weights: MINE\n")
    assert load_project(workspace).targets["krnksf_tyankps"].merge.weights == "MINE"


def test_doit_and_check_report_the_same_clear_error(workspace):
    append(workspace / "characters/krnk/character.yaml", "colour: red\n")
    proc = run_doit(workspace, "list", check=False)
    assert proc.returncode != 0 and "colour: unknown field" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_charfw(workspace, "check")
    assert proc.returncode == 2 and "colour: unknown field" in proc.stderr


def test_new_scaffolds_a_character(workspace):
    proc = run_charfw(workspace, "new", "mike", "--asymmetric", "--background", "white", "--outfit", "gym")
    assert proc.returncode == 0, proc.stderr
    folder = workspace / "characters/mike"
    assert (folder / "face/VIEW_CODES.md").exists() and (folder / "gym").is_dir()
    # empty folders are reported until images arrive; then the character validates
    project, warnings = check_project(workspace)
    assert "mike" not in project.characters and any("face.folder" in w for w in warnings)
    for y in range(8):
        shutil.copy(workspace / "characters/tyank/face/f00.png", folder / f"face/f0{y}.png")
    for y in range(8):
        shutil.copy(workspace / "characters/tyank/ps/b00.png", folder / f"gym/b0{y}.png")
    project, _ = check_project(workspace)
    assert project.targets["mikegym"].trigger_words == ["mikegym", "mike"]
    assert project.sets["mike/face"].symmetric is False


def test_a_family_setting_must_agree_with_the_model(workspace):
    """The family is read from the file; a contradicting `family:` line is one clear error naming it."""
    import torch
    from safetensors.torch import save_file

    (workspace / "models").mkdir()
    save_file({"conditioner.embedders.0.transformer.w": torch.zeros(1), "model.diffusion_model.x": torch.zeros(1)},
              str(workspace / "models/xl.safetensors"))
    set_model(workspace, "models/xl.safetensors")
    assert load_project(workspace).family is SDXL
    append(workspace / "charfw.yaml", "family: sd15\n")
    line = len((workspace / "charfw.yaml").read_text().splitlines())
    msg = error_of(workspace)
    assert f"charfw.yaml:{line}: family: the model is an SDXL checkpoint but `family: sd15` is set" in msg, msg
    set_model(workspace, "builtin:tiny-sd15")
    path = workspace / "charfw.yaml"
    path.write_text(path.read_text().replace("model: models/xl.safetensors", "model: builtin:tiny-sd15")
                    .replace("family: sd15", "family: sdxl"))
    assert "the model is an SD1.5 checkpoint but `family: sdxl` is set" in error_of(workspace)


def test_the_model_must_be_chosen(workspace):
    path = workspace / "charfw.yaml"
    path.write_text("\n".join(l for l in path.read_text().splitlines() if not l.startswith("model:")) + "\n")
    msg = error_of(workspace)
    assert "charfw.yaml" in msg and "model: required field is missing" in msg and "model: models/" in msg
    path.unlink()
    assert "no charfw.yaml here" in error_of(workspace)


def set_model(ws, value):
    path = ws / "charfw.yaml"
    path.write_text(path.read_text().replace("model: builtin:tiny-sd15", f"model: {value}"))


def test_check_catches_what_would_fail_later(workspace, tmp_path):
    import argparse

    import torch
    from safetensors.torch import save_file

    set_model(workspace, "builtin:tiny-sd16")
    msg = error_of(workspace)
    assert "charfw.yaml:" in msg and "model: unknown built-in model 'builtin:tiny-sd16'" in msg
    set_model_text = (workspace / "charfw.yaml").read_text()
    (workspace / "models").mkdir()
    for name, make, expected in [
        ("gone.safetensors", None, "model file not found"),
        ("lora.safetensors", lambda p: save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, str(p)),
         "lora.safetensors is not an SD1.5 checkpoint: it is a LoRA file"),
        ("evil.ckpt", lambda p: torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)},
                                            "args": argparse.Namespace(a=1)}, p), "evil.ckpt"),
    ]:
        if make:
            make(workspace / "models" / name)
        (workspace / "charfw.yaml").write_text(set_model_text.replace("builtin:tiny-sd16", f"models/{name}"))
        msg = error_of(workspace)
        assert expected in msg and "field" not in msg and "model:" in msg, msg
    (workspace / "charfw.yaml").write_text(set_model_text.replace("builtin:tiny-sd16", "builtin:tiny-sd15"))
    (workspace / "characters/lora/krnksf_tyankps.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    msg = error_of(workspace)
    assert "groups.yaml" in msg and "lora: krnksf_tyankps.safetensors: not a readable safetensors file" in msg


def test_background_out_of_range(workspace):
    path = workspace / "characters/krnk/character.yaml"
    path.write_text(path.read_text().replace("background: black", "background: [300, 0, 0]"))
    msg = error_of(workspace)
    assert "character.yaml:" in msg and "background" in msg and "300" in msg


def test_image_too_small_for_every_size_is_named(workspace):
    from PIL import Image

    Image.new("RGB", (60, 90)).save(workspace / "characters/krnk/face/f00-tiny.png")
    project, warnings = check_project(workspace)
    assert any("f00-tiny.png: smaller than every size of its set (128, 192 px" in w for w in warnings), warnings


@pytest.mark.parametrize("value, expected", [
    ("0.5", "merge.weights: expected a name or a list or a mapping (got 0.5)"),
    ('[1, "x", 1]', "merge.weights.1: Input should be a valid number, unable to parse string as a number (got 'x')")])
def test_bad_weights_point_at_the_value(workspace, value, expected):
    append(workspace / "characters/krnk/character.yaml", f"merge:\n  weights: {value}\n")
    assert expected in error_of(workspace)


def test_os_errors_are_one_line_naming_the_path(workspace):
    (workspace / "build").write_text("a file where the build folder should be")
    proc = run_doit(workspace, "list", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "charfw: error:" in proc.stderr and "build" in proc.stderr
    (workspace / "build").unlink()
    (workspace / "build/datasets").mkdir(parents=True)
    (workspace / "build/datasets/krnk.toml").mkdir()        # the TOML's place is taken by a folder
    proc = run_doit(workspace, "dataset:krnk", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "build/datasets/krnk.toml: Is a directory" in proc.stdout + proc.stderr
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "charfw.cli", "lora", "inspect", str(workspace / "none.safetensors")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("text,line,words", [
    ("keyword: krnk\nclass: [girl\nsymmetric: true\n", 2, "flow sequence that begins here is not closed"),
    ("keyword: krnk\nclass: \"girl\nsymmetric: true\n", 2, "quoted scalar that begins here is not closed"),
    ("keyword: krnk\noutfits: {sf: 1\nsymmetric: true\n", 2, "flow mapping that begins here is not closed"),
    ("keyword: krnk\n  class: girl\nsymmetric: true\n", 2, "mapping values are not allowed"),
    ("keyword: krnk\nclass: girl\n\tsymmetric: true\n", 3, "tab character"),
    ("keyword: krnk\nclass: girl\nclass: boy\n", 3, "duplicate key 'class'"),
])
def test_yaml_syntax_errors_name_the_line_that_has_them(workspace, text, line, words):
    path = workspace / "characters/krnk/character.yaml"
    path.write_text(text)
    msg = error_of(workspace)
    assert msg.startswith(f"{path}:{line}: ") and words in msg and "\n" not in msg, msg


def test_check_summarises_long_target_lists():
    from charfw.cli import summarize

    assert summarize(["a", "b"]) == "a, b"
    names = [f"t{i}" for i in range(200)]
    text = summarize(names)
    assert text.startswith("t0, t1") and "192 more" in text and len(text) < 120


def test_every_build_action_fails_with_one_line_not_a_traceback(monkeypatch, tmp_path):
    """A CharfwError inside a doit action becomes doit's TaskFailed (one line), the train action included."""
    import inspect

    from doit.exceptions import TaskFailed

    from charfw.errors import CharfwError
    from charfw.pipeline import actions

    not_actions = {"reported", "outdated_on_failure", "clean_training", "refused", "blocked"}
    found = {n for n, f in vars(actions).items()
             if inspect.isfunction(f) and f.__module__ == actions.__name__ and not n.startswith("_")}
    assert {"train", "generate", "images", "merge", "compress"} <= found
    for name in sorted(found - not_actions):
        assert getattr(getattr(actions, name), "__wrapped__", None) is not None, f"{name} is not @reported"

    def fail(req, cache):
        raise CharfwError("sd-scripts failed (exit code 3)")

    monkeypatch.setattr(actions, "run", fail)
    monkeypatch.setattr(actions, "claim_worker_gpu", lambda gpus: None)
    monkeypatch.delenv("CHARFW_DEBUG", raising=False)

    class Req:
        settings = type("S", (), {"gpus": None})()
        name = "krnk"
        cluster = None

    result = actions.train(Req(), str(tmp_path))
    assert isinstance(result, TaskFailed) and "sd-scripts failed (exit code 3)" in str(result)
